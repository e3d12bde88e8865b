"""Unit tests for providers/base.py: waits, serial sources, routes."""

import threading
import time

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.providers import base


def test_wait_until_returns_the_value():
    seq = iter([None, 0, 'yes'])
    assert waiting.wait_until(lambda: next(seq), 5, 'a value',
                              interval=0.01) == 'yes'


def test_wait_until_timeout_says_what_and_seen():
    with pytest.raises(errors.HarnessTimeout) as e:
        waiting.wait_until(lambda: False, 0.2, 'the moon',
                           seen=lambda: 'only clouds', interval=0.05)
    msg = str(e.value)
    assert 'the moon' in msg and 'only clouds' in msg and '0.2 s' in msg


def test_wait_until_abort_is_not_a_timeout():
    with pytest.raises(errors.HarnessError) as e:
        waiting.wait_until(lambda: False, 30, 'x', abort=lambda: 'it died',
                           seen=lambda: 'tail')
    assert not isinstance(e.value, errors.HarnessTimeout)
    assert 'it died' in str(e.value) and 'tail' in str(e.value)


def test_wait_until_seen_that_raises_does_not_hide_the_timeout():
    def broken():
        raise RuntimeError('boom')
    with pytest.raises(errors.HarnessTimeout) as e:
        waiting.wait_until(lambda: False, 0.05, 'x', seen=broken,
                           interval=0.01)
    assert 'could not describe' in str(e.value)


def test_tail_text_strips_ansi_and_limits():
    text = '\x1b[2J\x1b[01;01H' + '\n'.join('line%d' % i for i in range(50))
    out = logtext.tail_text(text, lines=3)
    assert out == 'line47\nline48\nline49'


def test_tail_file_missing(tmp_path):
    assert 'cannot read' in logtext.tail_file(str(tmp_path / 'nope'))


def _writer(path, chunks, delay):
    def run():
        for c in chunks:
            time.sleep(delay)
            with open(path, 'a') as f:
                f.write(c)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_file_serial_wait_for_and_follow(tmp_path):
    path = str(tmp_path / 'serial.log')
    src = base.FileSerialSource(path)
    assert src.read() == ''
    _writer(path, ['\x1b[2JHello from ', 'Uncalibrated Sextant\r\n'], 0.05)
    m = src.wait_for(r'Hello from Uncalibrated Sextant', 5)
    assert m.group(0).startswith('Hello')
    chunks = list(src.follow(timeout=0.3, interval=0.05))
    assert ''.join(chunks) == src.read()


def test_file_serial_timeout_carries_tail(tmp_path):
    path = tmp_path / 'serial.log'
    path.write_text('BdsDxe: loading Boot0002\r\nShell> ')
    src = base.FileSerialSource(str(path))
    with pytest.raises(errors.HarnessTimeout) as e:
        src.wait_for('never', 0.2)
    assert 'Shell>' in str(e.value) and 'never' in str(e.value)


def test_file_serial_guest_stopped_fails_fast(tmp_path):
    path = tmp_path / 'serial.log'
    path.write_text('some output')
    src = base.FileSerialSource(str(path), running=lambda: False)
    t = time.monotonic()
    with pytest.raises(errors.GuestStopped) as e:
        src.wait_for('never', 30)
    assert time.monotonic() - t < 2
    assert 'stopped' in str(e.value) and 'some output' in str(e.value)


def test_file_serial_match_already_there_when_guest_stopped(tmp_path):
    path = tmp_path / 'serial.log'
    path.write_text('type=refresh_stats count=1\r\n')
    src = base.FileSerialSource(str(path), running=lambda: False)
    assert src.wait_for('refresh_stats', 1)


def test_follow_ends_when_guest_stops(tmp_path):
    path = tmp_path / 'serial.log'
    path.write_text('abc')
    src = base.FileSerialSource(str(path), running=lambda: False)
    assert list(src.follow()) == ['abc']


def test_console_route_json_drops_none():
    r = base.ConsoleRoute(kind='direct', host='127.0.0.1', port=5910)
    assert r.to_json() == {'kind': 'direct', 'host': '127.0.0.1',
                           'port': 5910}


class _Guest(base.Guest):
    def __init__(self):
        self.name = 'g'
        self.running = True
        self.torn = 0

    def console_route(self, route=None):
        return None

    def console_vv(self, route=None):
        return ''

    def is_running(self):
        return self.running

    def teardown(self):
        self.torn += 1


def test_guest_defaults():
    g = _Guest()
    with pytest.raises(NotImplementedError):
        g.screendump('/tmp/x.png')
    with pytest.raises(errors.HarnessTimeout):
        g.wait_stopped(0.1)
    g.running = False
    g.wait_stopped(0.1)
    with g:
        pass
    assert g.torn == 1


def test_abstract_classes_cannot_be_instantiated():
    with pytest.raises(TypeError):
        base.GuestProvider()
    with pytest.raises(TypeError):
        base.SerialSource()
