"""sextant-serial console script."""

import json
import subprocess
import sys

import pytest

from kerbside_tempest_plugin.cmd import serial as cli
from kerbside_tempest_plugin.digest import chains
from kerbside_tempest_plugin.digest import events as ev
from unit_tests import sextant_fixtures as sf


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


@pytest.fixture
def log(tmp_path):
    p = tmp_path / 'serial.log'
    p.write_text(sf.ALL_TYPES_LOG)
    return p


def test_parse(capsys, log):
    status, objs, err = run(capsys, 'parse', log)
    assert status == 0 and err == ''
    assert len(objs) == 10
    assert objs[0] == {'type': 'keypress', 't': 1, 'unicode': 65,
                       'scancode': 0}
    assert objs[6] == {'type': 'mode_switch', 't': 7,
                       'requested': [1024, 768], 'applied': [800, 600]}
    assert objs[-1]['type'] == 'refresh_stats'
    assert objs[-1]['p99_us'] == 6900 and 't' not in objs[-1]


def test_chains_all_and_upto(capsys, log):
    status, [hashes], _ = run(capsys, 'chains', log)
    assert status == 0
    assert set(hashes) == set(ev.CHANNELS)
    events = [ev.Keypress(1, 0x41, 0), ev.LineRendered(2, 7),
              ev.SceneTransition(3, 'awaiting', 'booting'),
              ev.BootloaderDecision(4, 'retry', 3),
              ev.PasteReceived(5, 28, False), ev.BootloaderTimeout(6),
              ev.ModeSwitch(7, 1024, 768, 800, 600),
              ev.ModeCycle(8, 30, True), ev.Keypress(9, 0, 0x17)]
    assert hashes == chains.ChannelChains.replay(events).hashes
    status, [first2], _ = run(capsys, 'chains', log, '--upto', 2)
    assert first2 == chains.ChannelChains.replay(events[:2]).hashes
    assert first2['scene_transition'] == 0
    status, [none], _ = run(capsys, 'chains', log, '--upto', 0)
    assert set(none.values()) == {0}


def test_upto_beyond_end(capsys, log):
    status, objs, err = run(capsys, 'chains', log, '--upto', 99)
    assert status == 1 and objs == [] and 'only 9' in err


def test_malformed_log(capsys, tmp_path):
    p = tmp_path / 'bad.log'
    p.write_text(sf.ALL_TYPES_LOG.replace('row=7', 'row=seven'))
    status, objs, err = run(capsys, 'parse', p)
    assert status == 1 and objs == []
    assert err.count('\n') == 1
    assert 'serial line 4' in err and 'row=seven' in err


def test_no_records(capsys, tmp_path):
    p = tmp_path / 'empty.log'
    p.write_text('Hello from Uncalibrated Sextant\r\n')
    status, objs, err = run(capsys, 'parse', p)
    assert status == 1 and 'no drain records' in err


def test_missing_file(capsys, tmp_path):
    status, _, err = run(capsys, 'chains', tmp_path / 'nope')
    assert status == 1 and 'cannot read' in err


def test_incomplete_warns(capsys, tmp_path):
    p = tmp_path / 'partial.log'
    p.write_text(sf.canonical_log().rsplit('type=refresh_stats', 1)[0])
    status, objs, err = run(capsys, 'parse', p)
    assert status == 0 and len(objs) == 59 and 'incomplete' in err


@pytest.mark.parametrize('argv', [[], ['parse'], ['chains', 'x', '--upto',
                                                  '-1'],
                                  ['chains', 'x', '--upto', 'many']])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2


def test_runs_as_module_with_stdin():
    proc = subprocess.run(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.serial',
         'chains', '-'], input=sf.canonical_log().encode(),
        capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == set(ev.CHANNELS)
