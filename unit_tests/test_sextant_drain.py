"""Serial drain parser (contract §4.2) and replay into digest events."""

import pytest

from kerbside_tempest_plugin.digest import chains
from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.digest import payload as pl
from kerbside_tempest_plugin.sextant import drain
from unit_tests import sextant_fixtures as sf


def test_all_types_parse_to_typed_records():
    d = drain.parse(sf.ALL_TYPES_LOG)
    assert d.complete and d.banner_seen
    assert [r.to_json() for r in d.records] == [
        {'type': 'keypress', 't': 1, 'unicode': 0x41, 'scancode': 0},
        {'type': 'line', 't': 2, 'row': 7},
        {'type': 'transition', 't': 3, 'from': 'awaiting',
         'to': 'booting'},
        {'type': 'bootloader_decision', 't': 4, 'choice': 'retry',
         'attempt': 3},
        {'type': 'paste', 't': 5, 'len': 28, 'correct': False},
        {'type': 'bootloader_timeout', 't': 6},
        {'type': 'mode_switch', 't': 7, 'requested': [1024, 768],
         'applied': [800, 600]},
        {'type': 'mode_cycle', 't': 8, 'count': 30, 'interrupted': True},
        {'type': 'keypress', 't': 9, 'unicode': 0, 'scancode': 0x17},
    ]
    assert d.refresh_stats.to_json() == {
        'type': 'refresh_stats', 'count': 5, 'total_ms': 30,
        'mean_us': 6000, 'max_us': 7000, 'p99_us': 6900}
    assert d.ignored_after_terminator == 1
    assert d.records[0].line_no == 3


def test_to_events_replays_every_field():
    events = drain.parse(sf.ALL_TYPES_LOG).to_events()
    assert events == [
        ev.Keypress(1, 0x41, 0), ev.LineRendered(2, 7),
        ev.SceneTransition(3, 'awaiting', 'booting'),
        ev.BootloaderDecision(4, 'retry', 3),
        ev.PasteReceived(5, 28, False), ev.BootloaderTimeout(6),
        ev.ModeSwitch(7, 1024, 768, 800, 600), ev.ModeCycle(8, 30, True),
        ev.Keypress(9, 0, 0x17)]


def test_serial_replay_reproduces_the_digest_hashes():
    # The guest hashes what it drains: chains from the serial log equal
    # the chains of the same events pushed into a digest.
    d = drain.parse(sf.canonical_log())
    events = d.to_events()
    data = pl.encode_history(66, events, 0)
    assert pl.decode(data).hashes == chains.ChannelChains.replay(
        d.to_events()).hashes
    assert chains.ChannelChains.replay(d.to_events(upto=3)).hashes != \
        chains.ChannelChains.replay(events).hashes


@pytest.mark.parametrize('newline', ['\r\n', '\n'])
def test_crlf_or_lf(newline):
    d = drain.parse(sf.canonical_log(newline=newline))
    assert d.complete and len(d.records) == 59
    assert d.gop_modes[0] == (640, 480) and d.gop_modes[-1] == (2560, 1600)


def test_bytes_input_and_file(tmp_path):
    p = tmp_path / 'serial.log'
    p.write_bytes(sf.canonical_log().encode() + b'\xff\xfe junk\r\n')
    assert len(drain.parse_file(p).records) == 59


def test_incomplete_drain():
    text = sf.canonical_log().rsplit('type=refresh_stats', 1)[0]
    d = drain.parse(text)
    assert not d.complete and d.refresh_stats is None
    assert len(d.records) == 59


def test_non_records_are_skipped():
    d = drain.parse('BdsDxe: failed to load Boot0002\n'
                    'key=value other=thing\n'
                    '\x1b[0m\x1b[37m\n'
                    '[    0.000] type=line row=1\n')
    assert d.records == [] and not d.complete and not d.banner_seen


@pytest.mark.parametrize('line,reason', [
    ('t=1 type=line row=x', 'row='),
    ('t=1 type=line', 'expected keys'),
    ('t=1 type=line row=1 extra=2', 'expected keys'),
    ('t=1 type=line row=1 junk', 'not key=value'),
    ('t=-1 type=line row=1', 't='),
    ('t=1a type=line row=1', 't='),
    ('t=1 type=warp speed=9', 'unknown record type'),
    ('t=1 type=keypress unicode=41 scancode=0000', 'unicode='),
    ('t=1 type=keypress unicode=0041 scancode=00000', 'scancode='),
    ('t=1 type=keypress unicode=00G1 scancode=0000', 'unicode='),
    ('t=1 type=keypress unicode=0041 scancode=00AB', 'scancode='),
    ('t=1 type=transition from=awaiting to=limbo', 'to='),
    ('t=1 type=bootloader_decision choice=maybe attempt=1', 'choice='),
    ('t=1 type=paste len=23 correct=yes', 'correct='),
    ('t=1 type=mode_switch requested=1024*768 applied=800x600',
     'requested='),
    ('t=1 type=mode_cycle count=99999999999 interrupted=false', 'count='),
    ('type=line t=1 row=1', 'expected keys'),
    ('t=1 t=2 type=line row=1', 'repeated key'),
    ('type=refresh_stats count=1 total_ms=1 mean_us=1 max_us=1', 'keys'),
    ('t=1 type=refresh_stats count=1 total_ms=1 mean_us=1 max_us=1 '
     'p99_us=1', 'expected keys'),
    ('t=99999999999999999999 type=line row=1', 't='),
])
def test_malformed_record_names_line_and_text(line, reason):
    text = 'Hello from Uncalibrated Sextant\r\nt=0 type=line row=0\r\n' + \
        line + '\r\n'
    with pytest.raises(drain.SerialParseError) as info:
        drain.parse(text)
    err = info.value
    assert err.line_no == 3
    assert err.text == line
    assert reason in str(err)
    assert 'serial line 3' in str(err)


def test_ansi_escapes_stripped_from_record_lines():
    d = drain.parse('\x1b[0mt=5 type=line row=2\x1b[0m\r\n')
    assert d.records[0].fields == {'row': 2}
