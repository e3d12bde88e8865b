"""console.session and console.verbs over ryll.fake.FakeRyll (a real
Unix-socket control server) with the real ControlClient, DigestStream and
digest decoder: what each verb sends, what it returns, and how it fails.
"""

import io
import json
import os

import pytest

from kerbside_tempest_plugin.common import secrets
from kerbside_tempest_plugin.console import session as session_mod
from kerbside_tempest_plugin.console import shell
from kerbside_tempest_plugin.console import verbs
from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.digest import frame
from kerbside_tempest_plugin.digest import render
from kerbside_tempest_plugin.providers import base
from kerbside_tempest_plugin.ryll import fake as fake_ryll
from unit_tests import scenario_fakes

SECRET = 'tic-ket-5ecret-value'


class Target:
    """What a Session needs of a lane (the attached form)."""

    owned = False
    route = 'direct'

    def __init__(self, workdir):
        self.workdir = workdir
        self.redactor = secrets.Redactor()
        self.redactor.add(SECRET)
        self.running = True
        self.serial_path = os.path.join(workdir, 'serial.log')
        with open(self.serial_path, 'w') as f:
            f.write('Hello from Uncalibrated Sextant\nticket=%s\n' % SECRET)
        self.serial = base.FileSerialSource(self.serial_path,
                                            lambda: self.running)
        self.torn_down = 0

    def guest_running(self):
        return self.running

    def ryll(self):
        return {'state': 'running', 'pid': 1, 'returncode': None}

    def guest_info(self):
        return {'name': 'g', 'running': self.running}

    def teardown(self):
        self.torn_down += 1
        return {'leftover_pids': [], 'busy_ports': []}


def frame_png(counter, ring, hashes=None):
    return scenario_fakes.png_bytes(render.render_guest_frame(
        counter, hashes or {}, ring))


@pytest.fixture
def live(tmp_path):
    fake = fake_ryll.FakeRyll().start()
    fake.png = frame_png(3, [ev.Keypress(10, 13, 0)])
    target = Target(str(tmp_path))
    s = session_mod.Session(target, step_timeout=5)
    s._connect_path(fake.path, ready_timeout=5)
    try:
        yield s, fake, target
    finally:
        s.close()
        fake.stop()


def _keys(fake):
    return [(r['params']['scancode'], r['params']['state'])
            for r in fake.requests_for('send_key')]


def test_key_combo_and_shifted_character(live):
    s, fake, _ = live
    assert verbs.run(s, 'key ctrl+alt+delete enter A') == {
        'keys': ['ctrl+alt+delete', 'enter', 'A']}
    assert _keys(fake) == [
        (0x1D, 'down'), (0x38, 'down'), (0xE053, 'down'), (0xE053, 'up'),
        (0xB8, 'up'), (0x9D, 'up'),
        (0x1C, 'down'), (0x9C, 'up'),
        (0x2A, 'down'), (0x1E, 'down'), (0x9E, 'up'), (0xAA, 'up')]


def test_unknown_key_is_refused_before_anything_is_sent(live):
    s, fake, _ = live
    with pytest.raises(session_mod.UsageError) as e:
        verbs.run(s, 'key enter frobnicate')
    assert "unknown key name 'frobnicate'" in str(e.value)
    assert 'sextant/keys.py' in str(e.value)
    assert _keys(fake) == []


def test_type_holds_shift_where_needed(live):
    s, fake, _ = live
    assert verbs.run(s, 'type "a{"') == {'typed': 2}
    assert _keys(fake) == [(0x1E, 'down'), (0x9E, 'up'), (0x2A, 'down'),
                           (0x1A, 'down'), (0x9A, 'up'), (0xAA, 'up')]


def test_paste_waits_for_paste_completed(live):
    s, fake, _ = live
    out = verbs.run(s, 'paste sextant{HELLO_OPERATOR}')
    assert out['chars_sent'] == 23
    assert fake.requests_for('paste')[0]['params']['text'] == \
        'sextant{HELLO_OPERATOR}'


def test_digest_agrees_with_the_decoder(live, tmp_path):
    s, fake, _ = live
    saved = str(tmp_path / 'd.png')
    out = verbs.run(s, 'digest --save %s' % saved)
    with open(saved, 'rb') as f:
        theirs = frame.analyse(f.read())
    assert out['frame_counter'] == theirs.digest.frame_counter == 3
    assert out['events'] == [e.to_json() for e in theirs.digest.events]
    assert out['framebuffer_hash_ok'] is True
    assert out['scene'] == 'awaiting'     # scene_transition hash still 0


def test_scene_follows_the_newest_transition(live):
    s, fake, _ = live
    fake.png = frame_png(9, [ev.SceneTransition(50, 'awaiting', 'booting'),
                             ev.LineRendered(60, 0)],
                         hashes={'scene_transition': 0x1234})
    out = verbs.run(s, 'wait scene_transition to=booting --all')
    assert out['frame_counter'] == 9
    assert s.scene()[0] == 'booting'


def test_wait_times_out_saying_what_it_saw(live):
    s, fake, _ = live
    with pytest.raises(session_mod.ConsoleError) as e:
        verbs.run(s, 'wait scene_transition to=parked --timeout 0.5 --all')
    msg = str(e.value)
    assert 'waiting for shows scene_transition to=parked' in msg
    assert 'keypress' in msg          # the last digest's records


def test_digest_without_a_qr_says_so(live):
    s, fake, _ = live
    fake.png = fake_ryll.tiny_png()
    with pytest.raises(session_mod.ConsoleError) as e:
        s.digest(timeout=0.3)
    assert 'no digest on the screen' in str(e.value)


def test_a_closed_connection_reads_as_ryll_gone(live):
    s, fake, target = live
    target.running = False
    fake.active.close()
    with pytest.raises(session_mod.ConsoleError) as e:
        verbs.run(s, 'key enter')
    msg = str(e.value)
    assert 'powered off' in msg and 'control connection' in msg


def test_serial_is_redacted(live):
    s, _, _ = live
    out = verbs.run(s, 'serial')
    assert 'Hello from Uncalibrated Sextant' in out['text']
    assert SECRET not in out['text'] and out['guest_running'] is True
    assert verbs.run(s, 'serial --new')['text'] == ''


def test_status(live):
    s, _, _ = live
    st = verbs.run(s, 'status')
    assert st['control']['closed'] is False
    assert st['spice']['connected'] is True
    assert st['owned'] is False


def test_script_stops_at_the_first_error_with_json_lines(live):
    s, fake, _ = live
    out = io.StringIO()
    rc = shell.run_script(s, ['# comment', '', 'key enter', 'key nope',
                              'key enter'], out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rc == 1
    assert [r['verb'] for r in rows] == ['lane', 'key', 'key']
    assert rows[1] == {'line': 3, 'verb': 'key', 'ok': True,
                       'result': {'keys': ['enter']}}
    assert rows[2]['ok'] is False and 'nope' in rows[2]['error']
    assert len(_keys(fake)) == 2


def test_interactive_shell_prints_errors_and_goes_on(live):
    s, _, _ = live
    out = io.StringIO()
    rc = shell.run_interactive(
        s, io.StringIO('help\nfrobnicate\nkey enter\nquit\n'), out)
    text = out.getvalue()
    assert rc == 0
    assert "error: unknown verb 'frobnicate'" in text
    assert '"keys"' in text and 'walk NAME' in text
    assert 'Traceback' not in text


@pytest.mark.parametrize('line,message', [
    ('key', 'key: the following arguments are required'),
    ('wait', 'wait: the following arguments are required'),
    ('wait line_rendered row', "'row' is not FIELD=VALUE"),
    ('watch --count x', "invalid int value"),
    ('paste', 'paste needs some text'),
    ('type "unclosed', 'No closing quotation'),
    ('walk nowhere', "unknown walk 'nowhere'"),
    ('help nothing', "no verb 'nothing'"),
])
def test_bad_lines_are_usage_errors(live, line, message):
    s, _, _ = live
    with pytest.raises(session_mod.ConsoleError) as e:
        verbs.run(s, line)
    assert message in str(e.value)


def test_help_lists_every_verb():
    text = verbs.help_text()
    for verb in ('key', 'type', 'paste', 'shot', 'digest', 'watch',
                 'serial', 'status', 'walk', 'help'):
        assert '\n%s' % verb in '\n' + text


def test_values_and_combos():
    assert verbs._value('21') == 21 and verbs._value('true') is True
    assert verbs._value('1280x720') == (1280, 720)
    assert verbs._value('parked') == 'parked'
    assert session_mod.parse_combo('+') == ([0x2A], 0x0D)
    with pytest.raises(ValueError):
        session_mod.parse_combo('ctrl++')


def test_attach_needs_a_lane(tmp_path):
    with pytest.raises(session_mod.ConsoleError) as e:
        session_mod.Session.attach(str(tmp_path))
    assert 'no lane in' in str(e.value)


def test_nova_without_a_cloud_is_refused_readably():
    # No tempest test needed any more (test_console_nova.py), but a cloud.
    from kerbside_tempest_plugin.console import nova_cloud
    with pytest.raises(nova_cloud.CloudConfigError) as e:
        session_mod.make_lane(provider='nova', environ={})
    assert '--os-cloud-workdir' in str(e.value)
    assert 'OS_AUTH_URL' in str(e.value)


def test_walker_reports_each_beat_as_it_lands():
    """scenario.walk's on_beat hook, which `walk NAME` prints from."""
    from kerbside_tempest_plugin.scenario import capture as cap
    from kerbside_tempest_plugin.scenario import walk as walk_mod
    guest = scenario_fakes.FakeGuest(scale=0.05)
    client = scenario_fakes.FakeClient(guest)
    landed = []
    with cap.DigestStream(client) as stream:
        w = walk_mod.Walker(client, stream, step_timeout=15,
                            log=lambda m: None,
                            on_beat=lambda b: landed.append(
                                session_mod.beat_json(b)))
        walk_mod.run_walk('canonical', w)
    assert [b['beat'] for b in landed] == [b.name for b in w.beats]
    assert landed[0]['beat'] == 'awaiting' and landed[-1]['beat'] == \
        'power-off'
    assert all(b['ok'] for b in landed)


def test_wait_unless_fails_at_once(live):
    s, fake, _ = live
    fake.png = frame_png(12, [ev.PasteReceived(70, 25, False)],
                         hashes={'paste_received': 0x99})
    import time
    t = time.monotonic()
    with pytest.raises(session_mod.ConsoleError) as e:
        verbs.run(s, 'wait scene_transition to=parked --all --timeout 30 '
                     '--unless "paste_received correct=false"')
    assert time.monotonic() - t < 10
    assert 'showed paste_received correct=False instead' in str(e.value)


def test_watch_streams_new_digests(live):
    s, fake, _ = live
    s.stream.wait_for(lambda cd: True, 5, 'the first digest')
    fake.png = frame_png(5, [ev.LineRendered(20, 0)])
    got = []
    out = verbs.run(s, 'watch --count 1 --timeout 10', got.append)
    assert out == {'digests': 1, 'ended': 'count'}
    assert got[0]['frame_counter'] == 5
    assert verbs.run(s, 'watch --timeout 0.3') == {'digests': 0,
                                                   'ended': 'timeout'}


def test_serial_follow_ends_when_the_guest_stops(live):
    s, _, target = live
    import threading

    def later():
        with open(target.serial_path, 'a') as f:
            f.write('type=refresh_stats count=1\n')
        target.running = False
    threading.Timer(0.3, later).start()
    chunks = []
    out = verbs.run(s, 'serial --follow --timeout 10', chunks.append)
    assert out['ended'] == 'guest stopped'
    assert 'refresh_stats' in ''.join(c['text'] for c in chunks)


def test_ctrl_c_ends_watch_and_the_shell_goes_on(tmp_path):
    """The prompt in a real terminal (tmux), attached to a workdir whose
    ryll is the fake: Ctrl-C ends `watch`, the prompt comes back, `quit`
    leaves.
    """
    import shutil
    import subprocess
    import sys
    import time

    from kerbside_tempest_plugin.common import atomic
    from unit_tests.conftest import REPO_ROOT
    if shutil.which('tmux') is None:
        pytest.skip('no tmux')
    fake = fake_ryll.FakeRyll().start()
    fake.png = frame_png(3, [ev.Keypress(10, 13, 0)])
    w = str(tmp_path / 'lane')
    os.makedirs(w)
    atomic.write_json(os.path.join(w, 'lane.json'), {
        'state': 'up', 'route': 'direct', 'control_socket': fake.path})
    atomic.write_json(os.path.join(w, 'processes.json'), [])
    name = 'ktp-console-unit-%d' % os.getpid()

    def tmux(*args):
        return subprocess.run(['tmux'] + list(args), capture_output=True,
                              text=True, timeout=30)

    def wait_pane(text, count=1, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pane = tmux('capture-pane', '-p', '-J', '-S', '-', '-t',
                        name).stdout
            if pane.count(text) >= count:
                return pane
            time.sleep(0.2)
        raise AssertionError('no %r x%d in:\n%s' % (text, count, pane))
    try:
        tmux('new-session', '-d', '-s', name, '-x', '160', '-y', '40',
             '-c', str(REPO_ROOT), '%s -m kerbside_tempest_plugin.cmd.'
             'harness console --attach %s 2>/dev/null' % (sys.executable,
                                                          w))
        wait_pane('kerbside> ')
        tmux('send-keys', '-t', name, 'watch', 'Enter')
        time.sleep(1.5)
        tmux('send-keys', '-t', name, 'C-c')
        wait_pane('interrupted')
        tmux('send-keys', '-t', name, 'status', 'Enter')
        pane = wait_pane('"owned": false')
        assert 'Traceback' not in pane
        tmux('send-keys', '-t', name, 'quit', 'Enter')
        deadline = time.monotonic() + 20
        while tmux('has-session', '-t', name).returncode == 0 and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        assert tmux('has-session', '-t', name).returncode != 0
    finally:
        tmux('kill-session', '-t', name)
        fake.stop()


def test_a_misconfigured_provider_is_a_console_error(tmp_path):
    conf = tmp_path / 'tempest.conf'
    conf.write_text('[kerbside]\nprovider = shakenfist\n')
    with pytest.raises(session_mod.ConsoleError) as e:
        session_mod.Session.start(provider='shakenfist',
                                  config_file=str(conf),
                                  workdir=str(tmp_path / 'w'))
    assert 'cannot make the shakenfist lane' in str(e.value)
    assert 'api_url' in str(e.value)
