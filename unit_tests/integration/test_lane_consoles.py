"""Two consoles at once through one Kerbside (Lane(consoles=2)).

One MariaDB, one Kerbside whose static source lists both consoles, two
guests and two ryll sessions through the proxy at the same time, each
walking the canonical path on its own console slot and each judged by
both oracles as a scenario test judges one. Keys reaching the wrong
guest, a .vv of the wrong console or a shared "current" guest or ryll
make a drain or a beat fail; the proxy's /metrics must show two sessions
(4 authorized channel links each) and no denial.
"""

import os
import threading

import pytest

from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane import lane as lane_mod
from unit_tests.conftest import require_tools

pytestmark = pytest.mark.integration


def _metric(metrics, name):
    return sum(v for k, v in metrics.items()
               if k == name or k.startswith(name + '{'))


def test_two_consoles_at_once_through_one_kerbside(tmp_path):
    require_tools('qemu-system-x86_64', 'qemu-img', 'openssl', 'ryll',
                  'mariadbd')
    from kerbside_tempest_plugin import guest_images
    from kerbside_tempest_plugin.scenario import runner
    image = guest_images.sextant_image()
    lane = lane_mod.Lane(str(tmp_path / 'w'), route='kerbside', consoles=2)
    try:
        lane.up()
        with open(lane.kerbside.sources_path) as f:
            sources = f.read()
        for i in range(2):
            assert 'uuid: %s' % lane.console_uuids[i] in sources
            spice, tls = lane_mod.console_port_names(i)
            assert 'insecure_port: %d' % lane.ports[spice] in sources
            assert 'secure_port: %d' % lane.ports[tls] in sources
        slots = lane.console_slots()
        before = lane.kerbside.metrics()
        results = [None, None]
        barrier = threading.Barrier(2)

        def walk(i):
            barrier.wait(30)
            results[i] = runner.run_scenario(
                slots[i], 'canonical', 'kerbside', image,
                str(tmp_path / 'art'), name='two-consoles-%d' % (i + 1),
                log=lambda m: None)

        threads = [threading.Thread(target=walk, args=(i,))
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not any(t.is_alive() for t in threads)
        after = lane.kerbside.metrics()
        for r in results:
            assert r is not None and r.passed, r and r.failure_message()
            assert r.stats['fb_checked'] and r.stats['fb_matched']
        # Each walk had its own guest on its own console's port.
        ports = [s.guests[-1].spice_port for s in slots]
        assert ports == [lane.ports['guest_spice'],
                         lane.ports['guest_spice_2']]
        assert results[0].artifact_dir != results[1].artifact_dir
        assert lane.guest is None and lane.ryll is None
        # Both sessions went through the proxy, nothing was refused.
        for name, want in (('kerbside_proxy_authorized_total', 8),
                           ('kerbside_proxy_connections_total', 8)):
            assert _metric(after, name) - _metric(before, name) == want, (
                name, before, after)
        assert _metric(after, 'kerbside_proxy_denied_total') == \
            _metric(before, 'kerbside_proxy_denied_total')
        # One .vv fetched per console, each for its own uuid.
        vvs = os.listdir(os.path.join(lane.workdir, 'kerbside'))
        assert len([v for v in vvs if v.startswith('console-')]) == 2
        with open(os.path.join(lane.log_dir, 'gunicorn-access.log')) as f:
            access = f.read()
        for u in lane.console_uuids:
            assert access.count('/console/proxy/%s/%s/console.vv' % (
                lane_kerbside.SOURCE_NAME, u)) == 1, access
    finally:
        report = lane.down()
    assert report['leftover_pids'] == [] and report['busy_ports'] == []
