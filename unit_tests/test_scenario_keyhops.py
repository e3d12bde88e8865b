"""scenario.keyhops: every key of a walk on the last hop it reached.

A recorded clean walk (ryll's inputs capture, qemu's PS/2 trace and the
drain of the same walk: fixtures/keys/README.md), and synthesised hops
built from it: a key the relay dropped, a PS/2 queue that overflowed, a
byte never read, a key read but never registered, missing and bad
evidence.
"""

import json
import os

import pytest

from kerbside_tempest_plugin.scenario import html_report
from kerbside_tempest_plugin.scenario import keyhops
from kerbside_tempest_plugin.scenario import runner
from kerbside_tempest_plugin.sextant import drain as drain_mod

FIX = os.path.join(os.path.dirname(__file__), 'fixtures', 'keys')
SENT = ['enter', 'i', 'paste(23 chars)', 'enter', 'enter']
PASTE = 'sextant{HELLO_OPERATOR}'
KBD = '0x55aa00001c40'
SET1_TO_SET2 = {v: k for k, v in keyhops.SET2_TO_SET1.items()}


def _fixture(name, binary=False):
    with open(os.path.join(FIX, name), 'rb' if binary else 'r') as f:
        return f.read()


@pytest.fixture(scope='module')
def recorded():
    pcap = _fixture('canonical-inputs.pcap', binary=True)
    drain = drain_mod.parse(_fixture('canonical-drain.log'))
    keys = [r.fields['unicode'] for r in drain.records
            if r.type == 'keypress']
    return pcap, _fixture('canonical-ps2-trace.log'), keys


def _trace(steps, t0=1796600000.0):
    """qemu 7.2 trace lines for `steps`: ('key', make, down) is a
    keyboard event and its put(s) (xlate 1, as on this guest); ('read',
    value) is the guest reading one byte; ('gap', s) time passing;
    ('junk', text) a raw line. Steps are 1 ms apart.
    """
    out, t = [], t0
    for step in steps:
        t += 0.001
        if step[0] == 'gap':
            t += step[1]
        elif step[0] == 'key':
            _, make, down = step
            out.append('1@%.6f:ps2_keyboard_event %s qcode 0 down %d '
                       'modifier 0x0 modifiers 0x0 set 2 xlate 1'
                       % (t, KBD, int(down)))
            if not down:
                out.append('1@%.6f:ps2_put_keycode %s keycode 0xf0'
                           % (t, KBD))
            out.append('1@%.6f:ps2_put_keycode %s keycode 0x%02x'
                       % (t, KBD, SET1_TO_SET2[make]))
        elif step[0] == 'read':
            out.append('2@%.6f:ps2_read_data %s' % (t, KBD))
            out.append('2@%.6f:pckbd_kbd_read_data 0x%02x' % (t, step[1]))
        else:
            out.append(step[1])
    return '\n'.join(out) + '\n'


def _typed(msgs, skip=()):
    """Every message of `msgs` taken by qemu and read at once, but those
    whose index is in `skip`.
    """
    steps = []
    for m in msgs:
        if m.index in skip:
            continue
        steps += [('gap', 0.025), ('key', m.make, m.down),
                  ('read', m.make | (0 if m.down else 0x80))]
    return steps


def _relay(msgs, drop=None, spec='drop,channel=inputs,type=key_down,nth=5'):
    """The relay's records: a `key` record per message forwarded, an
    inject for the one (index `drop`) its fault dropped.
    """
    out = []
    for m in msgs:
        code = m.make | (0 if m.down else 0x80)
        if m.index == drop:
            out.append({'event': 'inject', 'action': 'drop', 'fault': spec,
                        'channel': 'inputs', 'direction': 'c2s',
                        'name': 'key_down' if m.down else 'key_up',
                        'code': code, 't': 1.0})
        else:
            out.append({'event': 'key', 'channel': 'inputs', 'conn': 4,
                        'key': 'down' if m.down else 'up', 'code': code,
                        't': 1.0 + m.index})
    return out


# -------------------------------------------------------- the recording


def test_a_recorded_clean_walk_has_every_key_registered(recorded):
    pcap, trace, keys = recorded
    hops = keyhops.build(pcap, None, trace, keys, None, SENT, load='0.64')
    assert len(hops.keys) == 27
    assert [k.hop for k in hops.keys] == [keyhops.REGISTERED] * 27
    assert hops.lost() == [] and hops.first_lost_line() is None
    paste = [k for k in hops.keys if k.group == 'paste']
    assert ''.join(k.char for k in paste) == PASTE
    assert [k.pos for k in paste] == list(range(1, 24))
    assert hops.keys[0].char == 'Enter' and hops.keys[0].group == 'enter'
    assert hops.observed[keyhops.RELAY].startswith('no plain leg')
    data = hops.to_json()
    assert data['ps2_queue']['bytes_dropped'] == 0
    assert data['ps2_queue']['max_depth'] <= 4
    assert data['ps2_queue']['left_in_queue'] == 0
    assert data['headline'].startswith('27 key(s) followed, none lost')
    json.dumps(data)


def test_the_trace_is_replayed_byte_by_byte(recorded):
    trace = keyhops.parse_trace(recorded[1])
    # the set-1 values the guest read are the codes ryll sent
    i_down = [k for k in trace.keys if k.make() == 0x17]
    assert i_down and i_down[0].values == [0x17]
    assert all(k.read == k.put for k in trace.keys)
    # learned set 2 -> set 1 agrees with the table
    for set2, set1 in trace.learned.items():
        assert keyhops.SET2_TO_SET1[set2] == set1


# ------------------------------------------------------------- the relay


def test_a_key_the_relay_dropped_is_put_on_the_proxy_hop(recorded):
    # drop,channel=inputs,type=key_down,nth=5: Enter, i, s, e, then x
    pcap, _, keys = recorded
    msgs = keyhops.sent_messages(pcap)
    downs = [m for m in msgs if m.down]
    x = downs[4]
    assert keyhops.char_of(x.make, False) == 'x'
    trace = _trace(_typed(msgs, skip={x.index}))
    registered = list(keys)
    registered.remove(ord('x'))
    hops = keyhops.build(pcap, _relay(msgs, drop=x.index), trace,
                         registered, None, SENT, load='7.9')
    lost = hops.lost()
    assert len(lost) == 1
    assert lost[0].group == 'paste' and lost[0].pos == 3
    assert lost[0].hop == keyhops.SENT
    line = hops.first_lost_line()
    assert line == ('key 3 of the paste (`x`) left ryll but never crossed '
                    'the proxy: the relay dropped its x press (fault '
                    'drop,channel=inputs,type=key_down,nth=5)')
    # not the guest's: everything else went all the way
    assert [k.hop for k in hops.keys if k is not lost[0]] == \
        [keyhops.REGISTERED] * 26


def test_a_key_the_relay_never_forwarded_without_a_fault(recorded):
    pcap, _, keys = recorded
    msgs = keyhops.sent_messages(pcap)
    relay = [e for e in _relay(msgs) if e['t'] != 1.0 + msgs[2].index]
    hops = keyhops.build(pcap, relay, None, None, None, SENT)
    assert hops.first_lost_line() == (
        'key 2 (`i`) left ryll but never crossed the proxy (the relay '
        'never forwarded its i press)')
    assert hops.observed[keyhops.QEMU].startswith('no PS/2 trace')


def test_a_corrupted_key_is_named_as_such(recorded):
    pcap, _, _ = recorded
    msgs = keyhops.sent_messages(pcap)
    relay = _relay(msgs, drop=msgs[2].index)
    relay[2].update(action='corrupt', fault='corrupt,channel=inputs')
    hops = keyhops.build(pcap, relay, None, None, None, SENT)
    assert hops.first_lost_line().startswith(
        'key 2 (`i`) left ryll but was changed crossing the proxy: the '
        'relay corrupted its i press')


# ------------------------------------------------------------- the guest


def _paste_msgs(recorded):
    msgs = keyhops.sent_messages(recorded[0])
    return msgs


def test_a_full_ps2_queue_drops_and_says_the_guest_starved(recorded):
    pcap, _, keys = recorded
    msgs = keyhops.sent_messages(pcap)
    # the guest stops reading after key 3 of the paste (its 6th message
    # pair): 16 bytes fill the queue, the rest are dropped
    first = 10
    steps = _typed(msgs[:first])
    later = msgs[first:]
    steps += [('key', m.make, m.down) for m in later]
    steps += [('read', m.make | (0 if m.down else 0x80))
              for m in later[:16]]
    trace = keyhops.parse_trace(_trace(steps))
    assert trace.max_depth == 16
    assert trace.drops == len(later) - 16
    hops = keyhops.build(pcap, None, _trace(steps), None, None, SENT,
                         load='7.9')
    lost = hops.lost()
    assert lost
    line = hops.first_lost_line()
    assert 'reached qemu but was never read by the guest: PS/2 queue ' \
        'full (qemu\'s queue held 16 bytes' in line
    assert 'load 7.9' in line
    assert all(k.hop == keyhops.QEMU for k in lost)


def test_a_byte_left_in_the_queue_was_never_read(recorded):
    pcap, _, _ = recorded
    msgs = keyhops.sent_messages(pcap)
    steps = _typed(msgs[:-1]) + [('key', msgs[-1].make, msgs[-1].down)]
    hops = keyhops.build(pcap, None, _trace(steps), None, None, SENT)
    line = hops.first_lost_line()
    assert line.startswith('key 27 (`Enter`) reached qemu but was never '
                           'read by the guest: its Enter press was still '
                           'in the PS/2 queue at the end (1 byte(s) left)')


def test_a_key_read_but_not_in_the_drain_is_the_guests(recorded):
    pcap, trace, keys = recorded
    registered = list(keys)
    # the guest lost the P of OPERATOR after reading it
    idx = len(registered) - 1 - registered[::-1].index(ord('P'))
    del registered[idx]
    hops = keyhops.build(pcap, None, trace, registered, None, SENT)
    assert hops.first_lost_line() == (
        'key 16 of the paste (`P`) was read by the guest but never '
        'registered (not in the drain\'s keypress records)')


def test_a_key_qemu_never_took(recorded):
    pcap, _, _ = recorded
    msgs = keyhops.sent_messages(pcap)
    trace = _trace(_typed(msgs, skip={msgs[0].index}))
    hops = keyhops.build(pcap, None, trace, None, None, SENT)
    assert hops.first_lost_line() == (
        'key 1 (`Enter`) left ryll but qemu\'s PS/2 keyboard never took '
        'its Enter press')


def test_without_a_drain_digests_give_registration_and_unseen_is_not_lost(
        recorded):
    pcap, trace, _ = recorded
    hops = keyhops.build(pcap, None, trace, None, [(6500, ord('i'))], SENT)
    assert hops.lost() == []
    assert hops.keys[1].registered is True
    assert hops.keys[1].hop == keyhops.REGISTERED
    assert hops.keys[2].hop == keyhops.READ
    assert 'no drain' in hops.notes[0]


# ---------------------------------------------------- missing and bad input


def test_no_evidence_at_all_says_so_and_loses_nothing():
    hops = keyhops.build(None, None, None, None, None, SENT)
    assert hops.keys == [] and hops.lost() == []
    assert hops.headline().startswith('no key to follow: no inputs capture')
    assert all(v is not None for v in hops.observed.values())


def test_a_truncated_capture_is_a_typed_error(recorded):
    with pytest.raises(keyhops.KeyHopsError, match='unreadable'):
        keyhops.build(recorded[0][:-7], None, None, None, None, SENT)


def test_a_garbled_trace_line_is_a_typed_error_with_its_line():
    text = _trace([('key', 0x1C, True),
                   ('junk', '1@1796600000.5:ps2_put_keycode what')])
    with pytest.raises(keyhops.KeyHopsError, match='line 3: a '
                       'ps2_put_keycode line that does not parse'):
        keyhops.parse_trace(text)


def test_a_trace_cut_mid_line_and_foreign_lines_are_skipped():
    text = _trace([('junk', 'qemu-system-x86_64: warning: something'),
                   ('key', 0x1C, True), ('read', 0x1C)])
    trace = keyhops.parse_trace(text + '1@1796600001.0:ps2_put_keyc')
    assert len(trace.keys) == 1 and trace.keys[0].read == 1


def test_a_command_reply_read_is_not_a_keys_byte():
    trace = keyhops.parse_trace(_trace([
        ('key', 0x1C, True), ('read', keyhops.ACK), ('read', 0x1C)]))
    assert trace.keys[0].values == [0x1C] and trace.left_in_queue == 0


def test_for_walk_takes_registration_from_a_drain_only_when_complete(
        recorded, tmp_path):
    pcap, trace, _ = recorded
    (tmp_path / 'ryll').mkdir()
    (tmp_path / 'ryll' / 'capture-inputs.pcap').write_bytes(pcap)
    (tmp_path / keyhops.TRACE).write_text(trace)
    # a walk that stopped: serial has no drain, only the banner
    partial = drain_mod.parse('Hello from Uncalibrated Sextant\r\n')
    hops, data = keyhops.for_walk(str(tmp_path), drain=partial, sent=SENT)
    assert hops.lost() == [] and data['lost'] == []
    assert {k.hop for k in hops.keys} == {keyhops.READ}
    full = drain_mod.parse(_fixture('canonical-drain.log'))
    hops, _ = keyhops.for_walk(str(tmp_path), drain=full, sent=SENT)
    assert {k.hop for k in hops.keys} == {keyhops.REGISTERED}


def test_for_walk_never_raises_on_bad_evidence(tmp_path):
    (tmp_path / 'ryll').mkdir()
    (tmp_path / 'ryll' / 'capture-inputs.pcap').write_bytes(b'garbage')
    hops, data = keyhops.for_walk(str(tmp_path), sent=SENT)
    assert hops is None and data['headline'].startswith('not run: ')


def test_split_code_and_characters():
    assert keyhops.split_code(0x1C) == (0x1C, True)
    assert keyhops.split_code(0x9C) == (0x1C, False)
    assert keyhops.split_code(0x48E0) == (0xE048, True)
    assert keyhops.split_code(0xC8E0) == (0xE048, False)
    assert keyhops.char_of(0x1A, True) == '{'
    assert keyhops.char_of(0x19, True) == 'P'
    assert keyhops.char_of(0x0C, True) == '_'
    assert keyhops.char_of(0xE048, False) == 'up'


# ------------------------------------------------------ runner and report


def test_a_failed_runs_cause_names_where_its_key_went():
    r = runner.RunResult('n', 'canonical', 'direct', '/a')
    r.beats = [{'name': 'paste-accepted', 'ok': False,
                'error': 'waiting for paste_received correct=true len=23, '
                'the guest showed paste_received len=22 instead'}]
    r.keys_lost = ('key 3 of the paste (`x`) left ryll but never crossed '
                   'the proxy: the relay dropped its x press (fault drop)')
    cause = r.cause()
    assert cause.startswith('beat paste-accepted: waiting for')
    assert cause.endswith('| key 3 of the paste (`x`) left ryll but never '
                          'crossed the proxy: the relay dropped its x press '
                          '(fault drop)')
    assert 'where the key went: key 3 of the paste' in r.failure_message()
    r.passed = True
    assert r.cause() is None


def test_the_report_shows_lost_keys_and_a_row_per_key(recorded, tmp_path):
    pcap, _, keys = recorded
    msgs = keyhops.sent_messages(pcap)
    x = [m for m in msgs if m.down][4]
    registered = list(keys)
    registered.remove(ord('x'))
    hops = keyhops.build(pcap, _relay(msgs, drop=x.index),
                         _trace(_typed(msgs, skip={x.index})), registered,
                         None, SENT)
    (tmp_path / 'keyhops.json').write_text(json.dumps(hops.to_json()))
    (tmp_path / 'result.json').write_text(json.dumps(
        {'name': 'n', 'passed': False, 'beats': [], 'results': []}))
    (tmp_path / 'liveness.json').write_text(json.dumps({
        'keys': [], 'path': {'wall_s': 8.0, 'available_s': 6.0,
                             'share': 0.25, 'worst_share': 0.5,
                             'who': 'qemu (CPU 0/TCG)'},
        'paste_pacing': [{'chars': 23, 'window': 12, 'chunks': [
            {'chars': 6, 'waited_s': 0.0, 'before': 'read'},
            {'chars': 3, 'waited_s': 2.1, 'before': 'lost: 4 of the '
             'keys\' queue bytes were still unread after 2.1 s'}]}]}))
    html = open(html_report.build(str(tmp_path))).read()
    assert 'Where the keys went' in html
    assert 'key 3 of the paste (`x`) left ryll but never crossed' in html
    assert html.count('<tr') >= 28
    assert 'paste of 23 characters paced on the PS/2 trace: 2 chunks of ' \
        'at most 12 queue bytes, the longest wait for the guest to read ' \
        'the last 2.100 s; lost: 4 of the keys&#x27; queue bytes' in html
    assert 'the console&#x27;s path waited for a CPU 25 % of the walk ' \
        '(6.0 s of 8.0 s available; most: qemu (CPU 0/TCG))' in html


def _records(order, msgs):
    """`key` records for msgs in `order` (indexes into msgs)."""
    out = []
    for n, i in enumerate(order):
        m = msgs[i]
        out.append({'event': 'key', 'channel': 'inputs', 'conn': 4,
                    'key': 'down' if m.down else 'up',
                    'code': m.make | (0 if m.down else 0x80),
                    't': 1.0 + n})
    return out


def test_a_key_the_relay_reordered_says_so_before_its_loss(recorded):
    # reorder,channel=inputs,type=key_down,nth=12: H's Shift goes after H
    pcap, _, keys = recorded
    msgs = keyhops.sent_messages(pcap)
    shift = [m for m in msgs if m.down][11]
    assert shift.make == 0x2A
    h = msgs[shift.index + 1]
    order = list(range(len(msgs)))
    order[shift.index], order[h.index] = h.index, shift.index
    spec = 'reorder,channel=inputs,type=key_down,nth=12'
    relay = _records(order, msgs) + [{
        'event': 'inject', 'action': 'reorder', 'fault': spec,
        'channel': 'inputs', 'name': 'key_down', 'code': 0x2A, 't': 1.0}]
    steps = []
    for i in order:
        m = msgs[i]
        steps += [('key', m.make, m.down),
                  ('read', m.make | (0 if m.down else 0x80))]
    registered = list(keys)
    registered[registered.index(ord('H'))] = ord('h')
    hops = keyhops.build(pcap, relay, _trace(steps), registered, None, SENT)
    assert hops.first_lost_line() == (
        'key 9 of the paste (`H`) crossed the proxy out of order: the relay '
        'reordered its Shift press (fault %s); then it was read by the '
        'guest but never registered (not in the drain\'s keypress records)'
        % spec)
    assert [k.pos for k in hops.lost()] == [9]


def test_a_key_the_relay_duplicated_is_named_when_nothing_was_lost(
        recorded):
    pcap, _, keys = recorded
    msgs = keyhops.sent_messages(pcap)
    x = [m for m in msgs if m.down][4]
    order = list(range(len(msgs)))
    order[x.index + 2:x.index + 2] = [x.index, x.index + 1]
    spec = 'duplicate,channel=inputs,after_keys=4,nth=2,span=2'
    relay = _records(order, msgs) + [{
        'event': 'inject', 'action': 'duplicate', 'fault': spec,
        'channel': 'inputs', 'name': 'key_up', 'code': 0xAD, 't': 1.0,
        'span': 2}, {
        'event': 'inject', 'action': 'duplicate', 'fault': spec,
        'channel': 'inputs', 'name': 'key_down', 'code': 0x2D, 't': 1.0}]
    registered = list(keys)
    registered.insert(registered.index(ord('x')), ord('x'))
    hops = keyhops.build(pcap, relay, None, registered, None, SENT)
    assert hops.lost() == []
    assert hops.first_lost_line() == (
        'key 3 of the paste (`x`) crossed the proxy twice: the relay sent 2 '
        'key message(s) ryll did not send (fault %s)' % spec)
    assert hops.to_json()['extra'] == hops.first_lost_line()


def test_a_paste_the_guest_took_short_after_reading_every_key(recorded):
    # no drain (the walk stopped at paste-accepted), every byte read from
    # qemu's queue, and the guest's paste_received says 18: the five went
    # inside the guest
    pcap, trace, _ = recorded
    hops = keyhops.build(pcap, None, trace, None, [(6500, ord('i'))], SENT,
                         pastes=[18])
    assert hops.lost() == []
    assert hops.first_lost_line() == (
        'the guest read all 23 keys of the paste from qemu\'s PS/2 queue '
        'but its paste took 18 (paste_received len=18): 5 lost inside the '
        'guest, after the PS/2 read (the firmware\'s key buffer or the '
        'guest\'s own poll)')
    # a paste the guest took whole says nothing
    assert keyhops.build(pcap, None, trace, None, None, SENT,
                         pastes=[23]).first_lost_line() is None


def test_keys_the_walk_typed_that_never_left_ryll(recorded):
    # the inputs channel cut after 3 keys: ryll's capture ends there
    pcap, trace, _ = recorded
    msgs = keyhops.sent_messages(pcap)
    hops = keyhops.build(pcap, None, None, None, None, SENT)
    assert hops.unsent is None
    three = keyhops.keystrokes(msgs)[:3]
    cut = sum(len(k.msgs) for k in three)
    import unittest.mock as mock
    with mock.patch.object(keyhops, 'sent_messages',
                           return_value=msgs[:cut]):
        hops = keyhops.build(pcap, None, None, None, None, SENT)
    assert hops.lost() == []
    assert hops.first_lost_line() == (
        'ryll sent 3 of the 27 keys the walk typed: key 2 of the paste and '
        'the 23 after it never left ryll')


def test_a_burst_that_overflows_the_queue_names_the_dropped_releases(
        recorded):
    # load run N=16 (docs/plans/keys-under-load.md): 18 key events reached
    # qemu at once, the queue held 16 and dropped the `}` release and its
    # Shift release; every press was read and registered
    pcap, _, keys = recorded
    msgs = keyhops.sent_messages(pcap)
    strokes = keyhops.keystrokes(msgs)
    end = strokes[24].msgs[-1].index + 1        # after `}`'s Shift up
    start = end - 18
    steps = _typed(msgs[:start])
    burst = msgs[start:end]
    steps += [('gap', 0.2)] + [('key', m.make, m.down) for m in burst]
    steps += [('read', m.make | (0 if m.down else 0x80))
              for m in burst[:16]]
    steps += _typed(msgs[end:])
    hops = keyhops.build(pcap, None, _trace(steps), keys, None, SENT)
    assert hops.lost() == []
    line = hops.first_lost_line()
    assert line.startswith(
        'qemu\'s PS/2 queue overflowed: 2 byte(s) dropped (key 23 of the '
        'paste (`}`) release, key 23 of the paste (`}`) Shift release): 17 '
        'key events reached qemu within 16.0 ms, which ryll had sent over ')
    assert hops.to_json()['overflow'] == line
    assert hops.to_json()['ps2_queue']['bytes_dropped'] == 2


def test_a_key_lost_under_load_is_put_on_qemus_full_queue():
    # recorded: N=16 through Kerbside, load 23 (fixtures/keys/README.md)
    pcap = _fixture('n16-lost-inputs.pcap', binary=True)
    trace = _fixture('n16-lost-ps2-trace.log')
    hops = keyhops.build(pcap, None, trace, None, None,
                         ['enter', 'i', 'paste(23 chars)', 'enter'],
                         load='23.44', pastes=[20])
    assert [k.label() for k in hops.lost()] == ['key 14 of the paste (`_`)']
    assert hops.first_lost_line() == (
        'key 14 of the paste (`_`) reached qemu but was never read by the '
        'guest: PS/2 queue full (qemu\'s queue held 16 bytes, its Shift '
        'press dropped): 17 key events reached qemu within 0.1 ms (the '
        'guest read the bytes queued ahead of it within 0.011 s, load '
        '23.44); and the guest read 22 of the 23 keys of the paste from '
        'qemu\'s PS/2 queue but its paste took 20 (paste_received len=20): '
        '2 lost inside the guest, after the PS/2 read (the firmware\'s key '
        'buffer or the guest\'s own poll)')
    data = hops.to_json()
    assert data['ps2_queue']['bytes_dropped'] == 4
    assert data['ps2_queue']['max_depth'] == 16
