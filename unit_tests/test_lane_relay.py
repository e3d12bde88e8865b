"""The lane's fault relay settings (no processes): where they come from,
what they change, and the errors a typo gets.
"""

import pytest

from kerbside_tempest_plugin.cmd import harness
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.lane import relay as lane_relay
from kerbside_tempest_plugin.spice import faults


@pytest.fixture
def clean_env(monkeypatch):
    for name in (lane_mod.QEMU_BINARY_ENV, lane_mod.HYPERVISOR_TLS_ENV,
                 lane_mod.FAULT_ENV, lane_mod.RELAY_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_have_no_relay_and_a_tls_leg(clean_env, tmp_path):
    lane = lane_mod.Lane(str(tmp_path))
    assert (lane.relay, lane.fault, lane.hypervisor_tls) == \
        (False, None, True)
    assert lane.qemu_options['qemu_binary'] == 'qemu-system-x86_64'


def test_a_fault_implies_the_relay_and_a_plain_leg(clean_env, tmp_path):
    lane = lane_mod.Lane(str(tmp_path), fault='drop,channel=inputs')
    assert lane.relay and not lane.hypervisor_tls
    assert 'hypervisor TLS off' in lane.relay_note
    assert lane.info()['relay_note'] == lane.relay_note


def test_the_environment_reaches_every_entry_point(clean_env, tmp_path):
    clean_env.setenv(lane_mod.QEMU_BINARY_ENV, '/opt/qemu/bin/qemu')
    clean_env.setenv(lane_mod.HYPERVISOR_TLS_ENV, 'off')
    lane = lane_mod.Lane(str(tmp_path))
    assert lane.qemu_options['qemu_binary'] == '/opt/qemu/bin/qemu'
    assert not lane.hypervisor_tls and not lane.relay
    clean_env.setenv(lane_mod.FAULT_ENV, 'cut,channel=display,after=3')
    lane = lane_mod.Lane(str(tmp_path))
    assert lane.fault == 'cut,channel=display,after=3' and lane.relay
    # an explicit argument wins over the environment
    lane = lane_mod.Lane(str(tmp_path), qemu_binary='/usr/bin/q',
                         hypervisor_tls=True, fault='')
    assert lane.qemu_options['qemu_binary'] == '/usr/bin/q'
    clean_env.setenv(lane_mod.RELAY_ENV, '1')
    clean_env.delenv(lane_mod.FAULT_ENV)
    assert lane_mod.Lane(str(tmp_path)).relay


@pytest.mark.parametrize('value', ['maybe', '2'])
def test_a_garbled_flag_is_named(clean_env, tmp_path, value):
    clean_env.setenv(lane_mod.HYPERVISOR_TLS_ENV, value)
    with pytest.raises(ValueError, match='KTP_HYPERVISOR_TLS=%s' % value):
        lane_mod.Lane(str(tmp_path))


def test_a_bad_fault_fails_before_anything_starts(clean_env, tmp_path):
    with pytest.raises(faults.FaultSpecError, match='no action'):
        lane_mod.Lane(str(tmp_path), fault='explode')


def test_ports_and_static_source_go_through_the_relay(clean_env, tmp_path):
    lane = lane_mod.Lane(str(tmp_path), relay=True, consoles=2)
    lane.ports = {'guest_spice': 5900, 'guest_spice_2': 5901,
                  'fault_relay': 6900, 'fault_relay_2': 6901}
    assert [lane.hypervisor_port(i) for i in (0, 1)] == [6900, 6901]
    plain = lane_mod.Lane(str(tmp_path))
    plain.ports = {'guest_spice': 5900}
    assert plain.hypervisor_port(0) == 5900
    assert lane_relay.relay_port_name(1) == 'fault_relay_2'


def test_arm_without_a_relay_says_how(clean_env, tmp_path):
    from kerbside_tempest_plugin.common import errors
    with pytest.raises(errors.HarnessError, match='--relay'):
        lane_mod.Lane(str(tmp_path)).arm_fault('drop,channel=inputs')


def test_the_direct_vv_is_pointed_at_the_relay():
    text = common_vv.direct_vv('127.0.0.1', 5900, 'pw', tls_port=5901)
    moved = common_vv.parse_vv(common_vv.with_port(text, 6900))
    assert moved['port'] == '6900' and 'tls-port' not in moved
    assert moved['password'] == 'pw'


def test_relay_log_skips_garbage(tmp_path):
    p = tmp_path / 'f.jsonl'
    p.write_text('{"event": "inject", "t": 5}\nnot json\n[1]\n'
                 '{"event": "link", "t": 1}\n')
    recs = lane_relay.read_log(str(p), since=2)
    assert [r['event'] for r in recs] == ['inject', 'unreadable']
    assert recs[1]['lines'] == 2
    assert lane_relay.read_log(str(tmp_path / 'none')) == []


def test_harness_fault_on_a_lane_without_a_relay(tmp_path, capsys):
    (tmp_path / 'lane.json').write_text('{"state": "up", "relay": null}')
    assert harness.main(['fault', '--workdir', str(tmp_path)]) == 1
    assert '--relay' in capsys.readouterr().err


def test_harness_up_takes_the_fault_flags():
    args = harness.build_parser().parse_args(
        ['up', '--fault', 'drop,channel=inputs', '--no-hypervisor-tls',
         '--qemu-binary', '/q'])
    assert (args.fault, args.hypervisor_tls, args.qemu_binary) == \
        ('drop,channel=inputs', False, '/q')
    assert harness.build_parser().parse_args(['up']).hypervisor_tls is None


@pytest.fixture
def running_relay(tmp_path):
    """A real relay (in this process) recorded in a lane.json."""
    import json
    import socket

    from kerbside_tempest_plugin.spice import relay as spice_relay
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    s.listen(1)
    sock = str(tmp_path / 'r.sock')
    r = spice_relay.Relay(s.getsockname()[1], control_path=sock).start()
    (tmp_path / 'lane.json').write_text(json.dumps({
        'state': 'up', 'relay': [{'name': 'fault-relay:1', 'control': sock,
                                  'port': r.port}]}))
    yield r
    r.stop()
    s.close()


def test_harness_fault_arms_shows_and_clears(running_relay, tmp_path,
                                             capsys):
    import json
    wd = ['--workdir', str(tmp_path)]
    assert harness.main(['fault', 'drop,channel=inputs,type=key_down'] +
                        wd) == 0
    assert json.loads(capsys.readouterr().out)['armed'] == [
        'drop,channel=inputs,type=key_down']
    assert harness.main(['fault'] + wd) == 0
    st = json.loads(capsys.readouterr().out)
    assert st['faults'][0]['fired'] == 0 and st['relay'] == 'fault-relay:1'
    assert harness.main(['fault', 'melt'] + wd) == 1
    assert 'no action' in capsys.readouterr().out
    assert harness.main(['fault', '--clear'] + wd) == 0
    assert harness.main(['fault', '--console', '2'] + wd) == 1
    assert 'not 2' in capsys.readouterr().err


def test_the_console_verb_and_its_errors(running_relay, tmp_path):
    import types

    from kerbside_tempest_plugin.console import session as session_mod
    from kerbside_tempest_plugin.console import verbs
    s = session_mod.Session(types.SimpleNamespace(
        workdir=str(tmp_path), route='kerbside', redactor=None))
    out = verbs.run(s, 'fault stall,channel=display,after=2,duration=20')
    assert out['armed'] == ['stall,channel=display,after=2,duration=20']
    assert verbs.run(s, 'fault')['faults'][0]['spec'].startswith('stall')
    with pytest.raises(session_mod.ConsoleError, match='no action'):
        s.fault('melt')
    assert verbs.run(s, 'fault --clear')['cleared'] == 1
    assert 'fault [SPEC' in verbs.help_text('fault')
