"""One lane per worker (issue 20): a tempest worker's classes with the
same lane settings share one direct-qemu lane; a class with other
settings takes the earlier lane down first; an unhealthy lane is never
shared; $KTP_LANE_PER_WORKER=0 turns sharing off. Fake lanes, no qemu.
"""

import pytest

from kerbside_tempest_plugin.tests.scenario import test_sextant_scenario as ts


class FakeLane:
    def __init__(self, workdir, dead=()):
        self.workdir = str(workdir)
        self._up = True
        self.dead = list(dead)
        self.downs = 0
        self.ryll_stops = 0
        self.guest = None

    def dead_services(self):
        return self.dead

    def down(self):
        self.downs += 1
        self._up = False
        return {}

    def stop_ryll(self):
        self.ryll_stops += 1


def _cls(name, lane_kwargs=None):
    cleanups = []

    class C(ts.SextantScenarioBase):
        route = 'kerbside'

        @classmethod
        def _lane_kwargs(cls):
            return dict(lane_kwargs or {})

        @classmethod
        def addClassResourceCleanup(cls, fn, *a, **kw):
            cleanups.append(fn)
    C.__name__ = name
    C.cleanups = cleanups
    return C


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    monkeypatch.delenv(ts.LANE_PER_WORKER_ENV, raising=False)
    monkeypatch.delenv('KTP_GUEST_RESTORE', raising=False)
    ts._WORKER_LANES.clear()
    yield
    ts._WORKER_LANES.clear()


def test_a_class_with_the_same_settings_shares_the_lane(tmp_path):
    a, b = _cls('A'), _cls('B')
    lane = FakeLane(tmp_path)
    assert a._worker_key() == b._worker_key()
    ts._WORKER_LANES[a._worker_key()] = (lane, '/img')
    assert b._worker_lane() is True
    assert b.lane is lane and b.image == '/img'
    b.cleanups[-1]()                   # the class's cleanup
    assert lane.downs == 0 and lane.ryll_stops == 1
    assert ts._WORKER_LANES[a._worker_key()][0] is lane
    ts._down_worker_lanes()            # the worker exits
    assert lane.downs == 1 and not ts._WORKER_LANES


def test_other_settings_take_the_earlier_lane_down(tmp_path):
    a = _cls('A')
    c = _cls('C', {'firewall_mode': 'warn'})
    assert a._worker_key() != c._worker_key()
    lane = FakeLane(tmp_path)
    ts._WORKER_LANES[a._worker_key()] = (lane, '/img')
    assert c._worker_lane() is False
    assert lane.downs == 1 and not ts._WORKER_LANES


def test_an_unhealthy_lane_is_not_shared(tmp_path):
    a, b = _cls('A'), _cls('B')
    lane = FakeLane(tmp_path, dead=['kerbside-daemon exited with 1'])
    ts._WORKER_LANES[a._worker_key()] = (lane, '/img')
    assert b._worker_lane() is False
    assert not ts._WORKER_LANES


def test_sharing_off(tmp_path, monkeypatch):
    monkeypatch.setenv(ts.LANE_PER_WORKER_ENV, '0')
    a = _cls('A')
    assert a._worker_key() is None
    assert a._worker_lane() is False


def test_restore_setting_is_part_of_the_key(monkeypatch):
    a = _cls('A')
    on = a._worker_key()
    monkeypatch.setenv('KTP_GUEST_RESTORE', '0')
    assert a._worker_key() != on
