"""Walker._paced_paste: a paste typed in chunks that fit qemu's PS/2
queue, each sent once qemu's trace shows the guest read the last, on a
fake qemu that writes the trace lines of the keys it is given (the
format of qemu 7.2's trace, docs/plans/keys-under-load.md).
"""

import time
import types

import pytest

from kerbside_tempest_plugin.scenario import keyhops
from kerbside_tempest_plugin.scenario import walk
from kerbside_tempest_plugin.sextant import keys as keys_mod

KBD = '0x55d0c0ffee00'


class Qemu:
    """Writes a trace: each pasted character's key events and the bytes
    they put in the queue; the guest reads them at once unless told to
    hold (`hold`), and the characters in `lose` never arrive (a relay
    that dropped them).
    """

    def __init__(self, path, hold=False, lose=()):
        self.path = path
        self.hold = hold
        self.lose = set(lose)
        self.queued = 0
        self.most_queued = 0
        self.t = 1796600000.0
        self.typed = []
        with open(path, 'w') as f:
            f.write('qemu-system-x86_64: a log line that is not a trace\n')

    def _line(self, f, text):
        self.t += 0.0001
        f.write('4242@%.6f:%s\n' % (self.t, text))

    def _event(self, f, code, down):
        self._line(f, 'ps2_keyboard_event %s qcode %d down %d modifier 0x0 '
                   'modifiers 0x0 set 2 xlate 1' % (KBD, code, down))
        if not down:
            self._line(f, 'ps2_put_keycode %s keycode 0xf0' % KBD)
        self._line(f, 'ps2_put_keycode %s keycode 0x%02x' % (KBD, code))
        self.queued += 1
        self.most_queued = max(self.most_queued, self.queued)

    def read_all(self, f=None):
        own = f is None
        f = f or open(self.path, 'a')
        while self.queued:
            self._line(f, 'ps2_read_data %s' % KBD)
            self._line(f, 'pckbd_kbd_read_data 0x1e')
            self.queued -= 1
        if own:
            f.close()

    def paste(self, text, char_delay_ms=None, timeout=None):
        with open(self.path, 'a') as f:
            for i, c in enumerate(text):
                self.typed.append(c)
                if (len(self.typed) - 1) in self.lose:
                    continue
                code = keys_mod.scancode(c)
                shift = keys_mod.needs_shift(c)
                if shift:
                    self._event(f, 0x2A, 1)
                self._event(f, code & 0x7F, 1)
                self._event(f, code & 0x7F, 0)
                if shift:
                    self._event(f, 0x2A, 0)
            if not self.hold:
                self.read_all(f)
        return len(text)


def walker(tmp_path, qemu):
    stream = types.SimpleNamespace(now=time.monotonic)
    w = walk.Walker(types.SimpleNamespace(paste=qemu.paste), stream,
                    key_bound_s=0, log=lambda m: None,
                    ps2_trace=qemu.path)
    return w


def test_chunks_fit_the_window_and_keep_the_text():
    text = 'sextant{HELLO_OPERATOR}'
    chunks = walk.paste_chunks(text)
    assert ''.join(chunks) == text
    for c in chunks:
        assert sum(walk.queue_bytes(x) for x in c) <= walk.PACE_WINDOW
    assert walk.queue_bytes('H') == 4 and walk.queue_bytes('h') == 2
    assert walk.queue_bytes('{') == 4 and walk.queue_bytes('_') == 4


def test_each_chunk_waits_for_the_guest_to_read_the_last(tmp_path):
    qemu = Qemu(str(tmp_path / 'ps2-trace.log'), hold=True)
    w = walker(tmp_path, qemu)
    sends = []
    real = qemu.paste

    def paste(text, **kw):
        # what the guest had not read when this chunk was sent
        sends.append((text, qemu.queued))
        n = real(text, **kw)
        # the guest reads the chunk a little later
        import threading
        threading.Timer(0.05, qemu.read_all).start()
        return n
    w.client.paste = paste
    assert w._paced_paste('sextant{HELLO_OPERATOR}') == 23
    assert ''.join(t for t, _ in sends) == 'sextant{HELLO_OPERATOR}'
    assert all(left == 0 for _, left in sends), sends
    assert qemu.most_queued <= walk.PACE_WINDOW
    rec = w.pacing[-1]
    assert rec['chars'] == 23 and len(rec['chunks']) == len(sends)
    assert all(c['before'] == 'read' for c in rec['chunks'])
    assert max(c['waited_s'] for c in rec['chunks'][1:]) >= 0.04


def test_without_pacing_a_burst_overfills_the_queue(tmp_path):
    """The fault pacing exists for: ryll's keys all delivered at once
    (qemu's main loop starved) put more than 16 bytes in the queue.
    """
    qemu = Qemu(str(tmp_path / 'ps2-trace.log'), hold=True)
    qemu.paste('sextant{HELLO_OPERATOR}')
    with open(qemu.path) as f:
        trace = keyhops.parse_trace(f.read())
    assert trace.drops > 0 and trace.max_depth == keyhops.PS2_QUEUE_SIZE


def test_a_key_lost_on_the_way_is_not_waited_for_twice(tmp_path,
                                                       monkeypatch):
    """A relay that drops a character: its chunk's bytes never come; the
    next chunk waits PACE_BOUND_S once, typing goes on (nothing retyped),
    and the later chunks do not wait for the lost bytes again.
    """
    monkeypatch.setattr(walk, 'PACE_BOUND_S', 0.3)
    qemu = Qemu(str(tmp_path / 'ps2-trace.log'), lose={8})
    w = walker(tmp_path, qemu)
    t0 = time.monotonic()
    assert w._paced_paste('sextant{HELLO_OPERATOR}') == 23
    took = time.monotonic() - t0
    assert ''.join(qemu.typed) == 'sextant{HELLO_OPERATOR}'
    states = [c['before'] for c in w.pacing[-1]['chunks']]
    lost = [s for s in states if s.startswith('lost')]
    assert len(lost) == 1, states
    assert lost[0].startswith('lost: 4 of the keys\' queue bytes were '
                              'still unread')
    assert took < 0.3 * 2 + 0.5


def test_a_bad_trace_line_stops_the_pacing_not_the_walk(tmp_path):
    """A garbled trace is the harness's instrument failing: the paste is
    typed whole without pacing, and the record names the bad line (a
    typed KeyHopsError, which keyhops reports again after the walk).
    """
    qemu = Qemu(str(tmp_path / 'ps2-trace.log'))
    with open(qemu.path, 'a') as f:
        f.write('4242@1796600000.000001:ps2_put_keycode %s keycode zz\n'
                % KBD)
    w = walker(tmp_path, qemu)
    assert w._paced_paste('sextant{HELLO_OPERATOR}') == 23
    assert ''.join(qemu.typed) == 'sextant{HELLO_OPERATOR}'
    chunks = w.pacing[-1]['chunks']
    assert len(chunks) == 1 and chunks[0]['chars'] == 23
    assert chunks[0]['before'].startswith(
        'trace unreadable, typed unpaced: ps2-trace.log line 2: a '
        'ps2_put_keycode line that does not parse')
    with pytest.raises(keyhops.KeyHopsError):
        keyhops.parse_trace(open(qemu.path).read())


def test_the_gauge_reads_only_whole_lines(tmp_path):
    path = tmp_path / 'ps2-trace.log'
    path.write_text('4242@1796600000.000001:ps2_keyboard_event %s qcode 30 '
                    'down 1 modifier 0x0 modifiers 0x0 set 2 xlate 1\n'
                    '4242@1796600000.000002:ps2_put_key' % KBD)
    g = keyhops.Ps2Gauge(str(path))
    assert g.poll().events == 1 and g.poll().queued == 0
    with open(path, 'a') as f:
        f.write('code %s keycode 0x1c\n' % KBD)
    assert g.poll().queued == 1
    assert keyhops.Ps2Gauge(str(tmp_path / 'none.log')).poll().events == 0


def test_a_trace_nobody_writes_stops_the_pacing_once(tmp_path, monkeypatch):
    """qemu writes no key event at all (a trace file that is not live):
    one wait, then the rest of the paste in one ryll paste.
    """
    monkeypatch.setattr(walk, 'PACE_BOUND_S', 0.3)
    path = tmp_path / 'ps2-trace.log'
    path.write_text('')
    pastes = []
    stream = types.SimpleNamespace(now=time.monotonic)
    w = walk.Walker(types.SimpleNamespace(
        paste=lambda text, **kw: pastes.append(text) or len(text)), stream,
        key_bound_s=0, log=lambda m: None, ps2_trace=str(path))
    t0 = time.monotonic()
    assert w._paced_paste('sextant{HELLO_OPERATOR}') == 23
    assert time.monotonic() - t0 < 0.3 * 2
    assert pastes == ['sextan', 't{HELLO_OPERATOR}']
    assert w.pacing[-1]['chunks'][1]['before'].startswith(
        'no trace: qemu wrote no key event in 0.')


def test_a_bad_line_mid_paste_types_the_rest_unpaced(tmp_path):
    qemu = Qemu(str(tmp_path / 'ps2-trace.log'))
    real = qemu.paste

    def paste(text, **kw):
        n = real(text, **kw)
        with open(qemu.path, 'a') as f:
            f.write('4242@1796600001.000001:ps2_read_data\n')   # no kbd
        return n
    w = walker(tmp_path, qemu)
    w.client.paste = paste
    assert w._paced_paste('sextant{HELLO_OPERATOR}') == 23
    assert ''.join(qemu.typed) == 'sextant{HELLO_OPERATOR}'
    chunks = w.pacing[-1]['chunks']
    assert [c['chars'] for c in chunks] == [6, 17]
    assert chunks[1]['before'].startswith(
        'trace unreadable, the rest typed unpaced: ps2-trace.log line ')
