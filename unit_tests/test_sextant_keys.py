"""Key names and characters -> AT set-1 scancodes."""

import pytest

from kerbside_tempest_plugin.sextant import contract
from kerbside_tempest_plugin.sextant import keys


@pytest.mark.parametrize('key,code', [
    ('Enter', 0x1C), ('Return', 0x1C), ('\r', 0x1C), ('\n', 0x1C),
    ('space', 0x39), (' ', 0x39), ('Esc', 0x01), ('Backspace', 0x0E),
    ('Tab', 0x0F), ('i', 0x17), ('I', 0x17), ('q', 0x10), ('p', 0x19),
    ('a', 0x1E), ('l', 0x26), ('z', 0x2C), ('m', 0x32), ('1', 0x02),
    ('9', 0x0A), ('0', 0x0B), ('-', 0x0C), ('_', 0x0C), ('=', 0x0D),
    ('[', 0x1A), ('{', 0x1A), (']', 0x1B), ('}', 0x1B), (';', 0x27),
    ("'", 0x28), ('`', 0x29), ('\\', 0x2B), (',', 0x33), ('.', 0x34),
    ('/', 0x35), ('?', 0x35), ('!', 0x02), ('F1', 0x3B), ('F10', 0x44),
    ('F12', 0x58), ('Left', 0xE04B), ('Home', 0xE047), ('kp_enter', 0xE01C),
    ('kp_0', 0x52), ('LShift', 0x2A),
])
def test_scancodes(key, code):
    assert keys.scancode(key) == code


@pytest.mark.parametrize('char,shift', [
    ('a', False), ('A', True), ('{', True), ('}', True), ('_', True),
    ('-', False), ('1', False), ('!', True), (' ', False), ('\r', False),
])
def test_needs_shift(char, shift):
    assert keys.needs_shift(char) is shift


def test_release():
    assert keys.release(0x1C) == 0x9C
    assert keys.release(0x17) == 0x97
    assert keys.release(0xE04B) == 0xE0CB
    with pytest.raises(keys.UnknownKey):
        keys.release(-1)


def test_paste_secret_is_typeable():
    strokes = keys.keystrokes(contract.PASTE_SECRET)
    assert len(strokes) == 23
    assert strokes[0] == (0x1F, False)                 # s
    assert strokes[7] == (0x1A, True)                  # {
    assert strokes[8] == (0x23, True)                  # H
    assert strokes[13] == (0x0C, True)                 # _
    assert strokes[-1] == (0x1B, True)                 # }


@pytest.mark.parametrize('bad', ['', 'NoSuchKey', '\u00e9', None, 'é'])
def test_unknown(bad):
    with pytest.raises(keys.UnknownKey):
        keys.scancode(bad)


def test_chords_hold_shift_with_the_shifted_characters():
    assert keys.chords('a{\n') == [(0x1E,), (keys.LSHIFT, 0x1A), (0x1C,)]
    assert keys.chords('') == []
    with pytest.raises(keys.UnknownKey):
        keys.chords('\u00e9')
