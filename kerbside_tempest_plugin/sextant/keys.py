"""Key names and characters -> AT set-1 make codes (one place for this).

Table: docs/contracts/ryll-control-socket.md §11. Extended keys are 0xE0xx.
Characters that need Shift on a US layout report needs_shift(); scancode()
gives the code of the unshifted key that produces them.
"""

from kerbside_tempest_plugin.common import errors

LSHIFT = 0x2A

_ROWS = [
    # (characters, first code): consecutive make codes along a key row.
    ('1234567890-=', 0x02),
    ('qwertyuiop[]', 0x10),
    ("asdfghjkl;'`", 0x1E),
    ('\\zxcvbnm,./', 0x2B),
]
_SHIFTED = dict(zip('!@#$%^&*()_+{}:"~|<>?', "1234567890-=[];'`\\,./"))

NAMED = {
    'esc': 0x01, 'escape': 0x01,
    'backspace': 0x0E,
    'tab': 0x0F,
    'enter': 0x1C, 'return': 0x1C,
    'lctrl': 0x1D, 'ctrl': 0x1D,
    'lshift': 0x2A, 'shift': 0x2A,
    'rshift': 0x36,
    'kp_multiply': 0x37,
    'lalt': 0x38, 'alt': 0x38,
    'space': 0x39,
    'capslock': 0x3A,
    'numlock': 0x45,
    'scrolllock': 0x46,
    'f11': 0x57, 'f12': 0x58,
    'rctrl': 0xE01D, 'ralt': 0xE038, 'altgr': 0xE038,
    'kp_enter': 0xE01C, 'kp_divide': 0xE035,
    'home': 0xE047, 'up': 0xE048, 'pgup': 0xE049, 'pageup': 0xE049,
    'left': 0xE04B, 'right': 0xE04D, 'end': 0xE04F, 'down': 0xE050,
    'pgdn': 0xE051, 'pagedown': 0xE051, 'insert': 0xE052,
    'delete': 0xE053,
    'lwin': 0xE05B, 'super': 0xE05B, 'rwin': 0xE05C, 'menu': 0xE05D,
}
NAMED.update({'f%d' % n: 0x3B + n - 1 for n in range(1, 11)})
NAMED.update({'kp_%s' % k: 0x47 + i
              for i, k in enumerate(['7', '8', '9', 'minus', '4', '5', '6',
                                     'plus', '1', '2', '3', '0', 'dot'])})

CHARS = {' ': 0x39, '\n': 0x1C, '\r': 0x1C, '\t': 0x0F, '\b': 0x0E,
         '\x1b': 0x01}
for _chars, _first in _ROWS:
    for _i, _c in enumerate(_chars):
        CHARS[_c] = _first + _i


class UnknownKey(errors.HarnessError, ValueError):
    """A key name or character with no AT set-1 code in our table."""


def needs_shift(char):
    """True when `char` is typed with Shift held on a US layout."""
    if len(char) != 1:
        return False
    return char.isascii() and (char.isupper() or char in _SHIFTED)


def scancode(name_or_char):
    """AT set-1 make code for a key name (`Enter`, `space`, `F5`) or a
    single character (`a`, `A`, `{`, `_`, `7`).

    For shifted characters this is the code of the key that types them;
    check needs_shift() to know whether to hold LSHIFT.
    """
    key = name_or_char
    if isinstance(key, int):
        return key
    if not isinstance(key, str) or not key:
        raise UnknownKey('not a key name or character: %r' % (key,))
    if len(key) == 1:
        c = key.lower() if key.isascii() and key.isalpha() else key
        c = _SHIFTED.get(c, c)
        if c in CHARS:
            return CHARS[c]
        raise UnknownKey('no AT set-1 code for character %r' % key)
    code = NAMED.get(key.lower())
    if code is None:
        raise UnknownKey('unknown key name %r' % key)
    return code


def release(code):
    """Break code for a make code: make | 0x80 (extended: 0xE0xx | 0x80)."""
    if not 0 <= code <= 0xFFFF:
        raise UnknownKey('not a set-1 make code: %r' % (code,))
    return code | 0x80


def keystrokes(text):
    """[(code, shift)] to type `text` key by key."""
    return [(scancode(c), needs_shift(c)) for c in text]


def chords(text):
    """The keys to press together for each character of `text`, as tuples
    of make codes ((LSHIFT, code) for a shifted character): what
    DirectQemuGuest.send_keys_qmp types over QMP.
    """
    return [(LSHIFT, code) if shift else (code,)
            for code, shift in keystrokes(text)]


def resolve(key):
    """The make code to send for `key` (an int scancode, a key name or a
    character typed without Shift): what ryll.client.ControlClient takes
    as its `resolve_key`.

    Raises ValueError (UnknownKey) for a name with no code and for a
    character that needs Shift held (send LSHIFT around it, or paste).
    """
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and needs_shift(key):
        raise UnknownKey(
            '%r needs Shift held: send_key(\'shift\', \'down\') around '
            'it, or use paste()' % key)
    return scancode(key)
