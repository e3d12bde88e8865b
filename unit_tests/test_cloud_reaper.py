"""The OpenStack cloud's reaper wiring (lane.openstack.cloud), without a
cloud: up() starts a lane.reaper.Reaper on cloud.json with the cloud's
own teardown before any service starts, down() stops it after the
teardown, leave_running() stops it for a cloud left up on purpose, and
`kerbside-openstack up` leaves its cloud up without one.

The real reaper process against a cloud workdir whose owner is killed is
in unit_tests/integration/test_harness_sigterm.py.
"""

import json
import os

import pytest

from kerbside_tempest_plugin.cmd import openstack as os_cmd
from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud
from kerbside_tempest_plugin.lane import reaper


class FakeReaper:
    """Records what the cloud asks of its reaper, in `events`."""

    def __init__(self, events, workdir, state_file=reaper.DEFAULT_STATE_FILE,
                 teardown=reaper.DEFAULT_TEARDOWN):
        self.events = events
        self.args = (workdir, state_file, teardown)
        self.events.append(('reaper', self.args))

    def start(self):
        self.events.append(('start', None))
        return self

    def stop(self):
        self.events.append(('stop', None))
        return 'stopped'


@pytest.fixture
def events(monkeypatch):
    """A cloud whose reaper is a FakeReaper, whose first service fails to
    start (up() raises HarnessError from _write_configs) and whose
    teardown is recorded; yields the list of what happened, in order.
    """
    got = []

    def prepare(self):
        os.makedirs(self.workdir, exist_ok=True)
        got.append(('prepare', None))

    def first_service(self):
        got.append(('service', None))
        raise errors.HarnessError('mariadbd did not start')

    def teardown(workdir, **kwargs):
        got.append(('teardown', workdir))
        return {'leftover_pids': [], 'busy_ports': []}

    monkeypatch.setattr(os_cloud.lane_reaper, 'Reaper',
                        lambda *a, **kw: FakeReaper(got, *a, **kw))
    monkeypatch.setattr(os_cloud.OpenStackCloud, '_prepare', prepare)
    monkeypatch.setattr(os_cloud.OpenStackCloud, '_write_configs',
                        first_service)
    monkeypatch.setattr(os_cloud, 'teardown_workdir', teardown)
    return got


def test_the_cloud_teardown_is_one_the_reaper_runs():
    assert reaper.check_teardown(os_cloud.TEARDOWN) == (
        'kerbside_tempest_plugin.lane.openstack.cloud', 'teardown_workdir')
    assert reaper.resolve_teardown(os_cloud.TEARDOWN) is \
        os_cloud.teardown_workdir


def test_the_cloud_teardown_needs_only_the_workdir(tmp_path):
    """What the reaper calls: teardown_workdir(workdir), after a crash,
    with nothing running; it records the cloud down in cloud.json, which
    is what a reaper watching it reads.
    """
    workdir = str(tmp_path / 'c')
    os.makedirs(workdir)
    with open(os.path.join(workdir, 'cloud.json'), 'w') as f:
        json.dump({'state': 'up', 'ports': {}}, f)
    report = os_cloud.teardown_workdir(workdir)
    assert report['leftover_pids'] == [] and report['busy_ports'] == []
    assert reaper.read_state(workdir, os_cloud.STATE_FILE) == 'down'


def test_up_starts_the_reaper_before_any_service(tmp_path, events):
    cloud = os_cloud.OpenStackCloud(str(tmp_path / 'c'), kerbside=False)
    with pytest.raises(errors.HarnessError):
        cloud.up()
    assert [e for e, _ in events] == ['prepare', 'reaper', 'start',
                                      'service']
    assert events[1][1] == (cloud.workdir, 'cloud.json', os_cloud.TEARDOWN)
    # What the reaper reads was written before it started.
    assert reaper.read_state(cloud.workdir, 'cloud.json') == 'starting'


def test_down_stops_the_reaper_after_the_teardown(tmp_path, events):
    cloud = os_cloud.OpenStackCloud(str(tmp_path / 'c'), kerbside=False)
    with pytest.raises(errors.HarnessError):
        cloud.up()
    del events[:]
    cloud.down()
    assert events == [('teardown', cloud.workdir), ('stop', None)]
    # Idempotent: neither runs again.
    cloud.down()
    assert len(events) == 2


def test_leave_running_stops_the_reaper_once(tmp_path, events):
    cloud = os_cloud.OpenStackCloud(str(tmp_path / 'c'), kerbside=False)
    cloud.leave_running()       # none started: nothing to do
    assert events == []
    with pytest.raises(errors.HarnessError):
        cloud.up()
    cloud.leave_running()
    cloud.leave_running()
    assert [e for e, _ in events].count('stop') == 1
    assert 'teardown' not in [e for e, _ in events]


class FakeCloud:
    """What cmd_up needs of an OpenStackCloud; records the calls."""

    instances = []

    def __init__(self, workdir, **kwargs):
        self.workdir = workdir
        self.calls = []
        self.redactor = None
        FakeCloud.instances.append(self)

    def up(self, timeout):
        self.calls.append('up')

    def leave_running(self):
        self.calls.append('leave_running')

    def down(self):
        self.calls.append('down')
        return {'leftover_pids': [], 'busy_ports': []}

    def info(self):
        return {'workdir': self.workdir}

    def memory(self):
        return {'total_mib': 0}


def test_kerbside_openstack_up_leaves_its_cloud_up_without_a_reaper(
        tmp_path, monkeypatch, capsys):
    """`up` exits with the cloud running: the reaper must not take it for
    a dead owner's cloud, so up stops it (and does not tear down).
    """
    FakeCloud.instances = []
    monkeypatch.setattr(os_cmd.os_cloud, 'OpenStackCloud', FakeCloud)
    args = os_cmd.build_parser().parse_args(
        ['up', '--workdir', str(tmp_path / 'c'), '--no-boot'])
    assert args.func(args) == 0
    assert FakeCloud.instances[0].calls == ['up', 'leave_running']
    assert json.loads(capsys.readouterr().out)['workdir'] == \
        str(tmp_path / 'c')
