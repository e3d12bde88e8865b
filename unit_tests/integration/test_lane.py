"""The direct-qemu lane for real: qemu, a private MariaDB, Kerbside 0.8.0
(API, daemon, kerbside-proxy) and ryll 0.3.0, on both console routes.

One lane serves the whole module (two cores: one qemu at a time); every
test boots a fresh guest on it, which is exactly the lane's design (the
guest SPICE port and ticket are fixed per lane, so Kerbside's static source
never changes). The tests run in file order: sessions on both routes, then
faults (ryll, qemu, kerbside-proxy killed mid-session), then the teardown
and secrets checks on the very same lane.

With the bundled guest (or SEXTANT_IMAGE) the guest is Sextant and
each route runs the whole walk: the screenshot decodes as a visual digest,
keys and the paste reach the guest, and the serial drain proves it. Without
an image the guest is a diskless OVMF (EFI shell): still a SPICE surface,
and typed keys echo on serial.
"""

import os
import re
import signal
import time

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.lane import procs
from kerbside_tempest_plugin.sextant import keys
from unit_tests.conftest import require_kerbside_lane

pytestmark = pytest.mark.integration

ROUTES = ('kerbside', 'direct')
PASTE_SECRET = 'sextant{HELLO_OPERATOR}'
SHELL_PROMPT = r'Shell> '


def _image():
    # SEXTANT_IMAGE, else the bundled guest (built when missing).
    from kerbside_tempest_plugin import guest_images
    return guest_images.sextant_image()


@pytest.fixture(scope='module')
def image():
    return _image()


@pytest.fixture(scope='module')
def lane(tmp_path_factory):
    require_kerbside_lane()
    # A short workdir: unix socket paths must stay under ~100 bytes.
    workdir = str(tmp_path_factory.mktemp('lane'))
    the_lane = lane_mod.Lane(workdir, route='kerbside')
    try:
        the_lane.up()
        yield the_lane
    finally:
        the_lane.down()


def _boot(lane, image, name):
    banner = lane_mod.SEXTANT_BANNER if image else SHELL_PROMPT
    return lane.boot_guest(image, name=name, banner=banner, timeout=120)


def _session(lane, guest, route):
    """Start ryll on `route`; return (RyllProcess, connected client)."""
    rp = lane.start_ryll(guest, route=route, timeout=30)
    client = rp.connect(timeout=30, resolve_key=keys.resolve)
    client.subscribe(['surface_drawn', 'paste_completed', 'paste_failed'])
    return rp, client


def _digest(client, predicate=lambda d: True, timeout=45, what='a digest'):
    """Screenshots until one decodes to a digest satisfying `predicate`."""
    from kerbside_tempest_plugin.digest import errors
    from kerbside_tempest_plugin.digest import frame
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        shot = client.screenshot()
        try:
            analysis = frame.analyse(shot.png)
        except errors.DigestError as e:
            seen.append('undecodable (%s)' % type(e).__name__)
        else:
            d = analysis.digest
            seen.append('frame %d %s' % (
                d.frame_counter, [e.kind for e in d.events]))
            if predicate(d):
                return analysis
        if time.monotonic() >= deadline:
            raise AssertionError('no screenshot digest with %s within %.0f s;'
                                 ' last seen: %s' % (what, timeout,
                                                     seen[-5:]))
        time.sleep(0.3)


def _has(d, kind, **fields):
    for e in d.events:
        if e.kind == kind and all(getattr(e, k) == v
                                  for k, v in fields.items()):
            return True
    return False


def _check_png(png, width=None, height=None):
    import io

    from PIL import Image
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    img = Image.open(io.BytesIO(png))
    img.load()
    if width:
        assert img.size == (width, height)
    return img


def _sextant_walk(guest, client):
    """Enter, `i`, paste the secret, Enter (Parked), Enter (drain)."""
    from kerbside_tempest_plugin.ryll.client import RyllConnectionClosed
    from kerbside_tempest_plugin.ryll.client import RyllRpcError
    from kerbside_tempest_plugin.sextant import drain as drain_mod
    first = _digest(client, what='the Awaiting screen')
    assert first.digest.frame_counter >= 1
    client.send_key('Enter')
    _digest(client, lambda d: d.hashes.get(0x13) or any(
        e.kind == 'line_rendered' for e in d.events), 30,
        'a scene transition after Enter')
    _digest(client, lambda d: any(e.kind == 'line_rendered' and e.row >= 21
                                  for e in d.events), 45,
            'the bootloader prompt (line_rendered row >= 21)')
    client.send_key('i')
    _digest(client, lambda d: _has(d, 'bootloader_decision',
                                   choice='ignore') or any(
        e.kind == 'line_rendered' and e.row >= 23 for e in d.events), 30,
        'the paste prompt after i')
    assert client.paste(PASTE_SECRET, timeout=30) == 23
    client.send_key('Enter')
    _digest(client, lambda d: _has(d, 'scene_transition',
                                   from_phase='booting', to_phase='parked'),
            45, 'the booting->parked transition')
    try:
        client.send_key('Enter')
    except (RyllConnectionClosed, RyllRpcError):
        # The guest may power off before the key-up is answered: ryll
        # then reports EOF, or internal_error for its closed input queue
        # (docs/contracts/ryll-control-socket.md). The drain below proves
        # the key-down arrived.
        pass
    guest.serial.wait_for(r'type=refresh_stats', 60)
    guest.wait_stopped(30)
    drain = drain_mod.parse(guest.serial.read())
    kinds = [r.type for r in drain.records]
    assert kinds.count('keypress') >= 3, kinds
    assert any(r.type == 'paste' and r.fields.get('len') == 23 and
               r.fields.get('correct') is True for r in drain.records), \
        [r for r in drain.records if r.type == 'paste']
    return drain


def _shell_walk(guest, client):
    """Diskless OVMF: keys and a paste echo on serial in the EFI shell."""
    _check_png(client.screenshot().png)
    start = len(guest.serial.read())
    for ch in 'ver':
        client.send_key(ch)
        time.sleep(0.2)
    guest.serial.wait_for(r'ver', 30, start=start)
    assert client.paste('\necho harness\n', char_delay_ms=30,
                        timeout=30) > 0
    guest.serial.wait_for(r'echo harness', 30, start=start)


@pytest.mark.parametrize('route', ROUTES)
def test_session(lane, image, route):
    guest = _boot(lane, image, 'sess-%s' % route)
    rp, client = _session(lane, guest, route)
    try:
        assert 'paste' in client.supported_methods
        assert 'screenshot' in client.supported_methods
        assert 'surface_drawn' in client.supported_events
        assert 'paste_completed' in client.supported_events
        status = rp.wait_ready(client, timeout=60)
        assert status['spice_connected'] is True
        assert status['surfaces'] and status['surfaces'][0]['width'] > 0
        shot = client.screenshot()
        _check_png(shot.png, shot.width, shot.height)
        if route == 'kerbside':
            # ryll connected through the proxy's TLS port, not qemu's.
            log = open(rp.stdout_path).read() + open(rp.stderr_path).read()
            assert ('127.0.0.1:%d' % lane.ports['proxy_secure']) in log, \
                log[-2000:]
            metrics = lane.kerbside.metrics()
            assert any(k.startswith('kerbside_proxy_authorized_total') and
                       v >= 1 for k, v in metrics.items()), metrics
        if image:
            _sextant_walk(guest, client)
        else:
            _shell_walk(guest, client)
    finally:
        client.close()
        lane.stop_ryll()
        guest.teardown()
    assert os.path.getsize(guest.serial_path) > 0


def _kill_and_expect_closed(client, kill, deadline):
    """Run `kill`, then poll status until the typed error arrives."""
    from kerbside_tempest_plugin.ryll.client import RyllConnectionClosed
    from kerbside_tempest_plugin.ryll.client import RyllError
    kill()
    t = time.monotonic()
    while True:
        try:
            client.status(timeout=2)
        except RyllConnectionClosed:
            return time.monotonic() - t
        except RyllError as e:
            pytest.fail('expected RyllConnectionClosed, got %r' % e)
        if time.monotonic() - t > deadline:
            pytest.fail('the control client saw no EOF %.0f s after the '
                        'kill' % deadline)
        time.sleep(0.1)


@pytest.mark.parametrize('victim', ['ryll', 'qemu'])
def test_fault_kill(lane, image, victim):
    """SIGKILL ryll or qemu mid-session (kerbside route): the client gets
    RyllConnectionClosed within the deadline; the logs are kept.
    """
    guest = _boot(lane, image, 'fault-%s' % victim)
    rp, client = _session(lane, guest, 'kerbside')
    deadline = 5 if victim == 'ryll' else 15
    try:
        rp.wait_ready(client, timeout=60)
        pid = rp.pid if victim == 'ryll' else guest.pid
        took = _kill_and_expect_closed(
            client, lambda: os.kill(pid, signal.SIGKILL), deadline)
        assert took < deadline
        if victim == 'ryll':
            assert guest.is_running()  # the guest does not care
        else:
            assert rp._proc.wait(10) is not None  # ryll ends with SPICE
    finally:
        client.close()
        lane.stop_ryll()
        guest.teardown()
    assert not guest.is_running()
    assert not common_ports.is_listening(guest.spice_port)
    assert os.path.exists(guest.log_path) and os.path.exists(rp.stderr_path)


def test_fault_kill_proxy(lane, image):
    guest = _boot(lane, image, 'fault-proxy')
    rp, client = _session(lane, guest, 'kerbside')
    try:
        rp.wait_ready(client, timeout=60)
        pids = [p for p in procs.group_members(lane.kerbside.daemon.pid)
                if os.path.basename((procs.proc_cmdline(p) or [''])[0]) ==
                'kerbside-proxy']
        assert pids, 'no kerbside-proxy in the daemon group'

        def kill():
            for p in pids:
                os.kill(p, signal.SIGKILL)

        took = _kill_and_expect_closed(client, kill, 15)
        assert took < 15
        client.close()
        lane.stop_ryll()
        # kerbside 0.8.0's daemon exits when its proxy dies (no restart):
        # the kerbside route now fails clearly, the direct route still
        # reaches the same guest, which tells a proxy fault from a guest one.
        waiting.wait_until(lambda: lane.dead_services(), 15,
                           'the lane to notice the dead proxy')
        with pytest.raises(errors.ProviderError) as e:
            lane.start_ryll(guest, route='kerbside')
        assert 'kerbside route is down' in str(e.value)
        rp, client = _session(lane, guest, 'direct')
        assert rp.wait_ready(client, timeout=60)['surfaces']
    finally:
        client.close()
        lane.stop_ryll()
        guest.teardown()


def _secret_values(workdir):
    secrets_dir = os.path.join(workdir, 'secrets')
    values = {}
    for name in ('spice-ticket', 'db-password', 'auth-secret-seed',
                 'api-token'):
        with open(os.path.join(secrets_dir, name)) as f:
            values[name] = f.read().strip()
    for name in os.listdir(secrets_dir):
        if name.endswith('.vv'):
            with open(os.path.join(secrets_dir, name)) as f:
                values[name] = common_vv.parse_vv(f.read())['password']
    return values


def test_teardown_frees_everything_and_leaks_no_secret(lane):
    workdir = lane.workdir
    records = list(lane.registry.records)
    # Every record says what ran (ryll's too: it is recorded from the argv
    # it was started with, not a /proc read that may race the exec).
    assert any(r['name'].startswith('ryll:') for r in records), records
    assert [r['name'] for r in records if not r['argv']] == []
    ports = [p for p in lane.ports.values() if p]
    report = lane.down()
    assert report['leftover_pids'] == [], report
    assert report['busy_ports'] == [], report
    for r in records:
        assert not procs.pid_alive(r['pid'], r['start_ticks']), r
    assert common_ports.busy_ports(ports) == []
    # the daemon's proxy child is gone too
    assert not [p for p in procs.all_pids()
                if (procs.proc_cmdline(p) or [''])[0].endswith(
                    'kerbside-proxy') and any(
                    str(lane.ports['proxy_secure']) in a
                    for a in procs.proc_cmdline(p))]
    # logs are kept
    for rel in ('logs/kerbside.log', 'logs/kerbside-daemon.out',
                'logs/mariadbd.err', 'logs/gunicorn-error.log',
                'processes.json', 'lane.json'):
        assert os.path.getsize(os.path.join(workdir, rel)) > 0, rel
    # no secret outside secrets/
    values = _secret_values(workdir)
    assert any(k.endswith('.vv') for k in values), values.keys()
    leaks = []
    for dirpath, dirnames, filenames in os.walk(workdir):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) !=
                       os.path.join(workdir, 'secrets')]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            data = open(path, 'rb').read()
            for key, value in values.items():
                if value.encode() in data:
                    leaks.append('%s in %s' % (key, path))
    assert leaks == []
    # and the harness's own files never needed the scrub safety net
    own = [f for f in report['scrubbed_files'] if not f.startswith('logs/')
           and '/ryll.std' not in f]
    assert own == [], report['scrubbed_files']
    # secrets stay private
    for dirpath, _, filenames in os.walk(os.path.join(workdir, 'secrets')):
        for name in filenames:
            mode = os.stat(os.path.join(dirpath, name)).st_mode & 0o077
            if dirpath == os.path.join(workdir, 'secrets'):
                assert mode == 0, name
    assert re.search(r'"state": "down"', open(
        os.path.join(workdir, 'lane.json')).read())
