"""The Sextant guest contract in one place (docs/contracts/sextant.md).

Serial text, the paste secret, phases, choices, scene rows and the digest
geometry, so no other module hard-codes them.
"""

from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.digest import fbhash

BANNER = 'Hello from Uncalibrated Sextant'
GOP_MODES_PREFIX = 'available GOP modes:'
PASTE_SECRET = 'sextant{HELLO_OPERATOR}'
PASTE_BLOB = 'c2V4dGFudHtIRUxMT19PUEVSQVRPUn0='   # base64 of the secret
PASTE_MAX = 64
MAX_WRONG_PASTES = 3

AWAITING = 'awaiting'
BOOTING = 'booting'
PARKED = 'parked'
STREAM_EXERCISE = 'stream_exercise'
PHASES = (AWAITING, BOOTING, PARKED, STREAM_EXERCISE)
assert set(PHASES) == set(ev.PHASE_CODES)

RETRY = 'retry'
IGNORE = 'ignore'
ABORT = 'abort'
CHOICES = (RETRY, IGNORE, ABORT)
assert set(CHOICES) == set(ev.CHOICE_CODES)

# Serial `type=` names, and the terminator of the drain.
SERIAL_TYPES = tuple(cls.SERIAL_TYPE for cls in ev.EVENT_TYPES)
REFRESH_STATS = 'refresh_stats'

# Scene layout (§5).
BOOT_SCRIPT_ROWS = range(0, 19)
BOOTLOADER_PROMPT_ROW = 21
PASTE_PROMPT_ROW = 25
POLL_MS = 50
BOOT_LINE_MS = 200
PASTE_TIMEOUT_S = 60
# The harness pastes one character every 50 ms, the guest's own poll rate.
# Upstream used 20 ms; under load on two TCG cores a 20 ms paste lost a
# character once in 47 (qemu's 16-byte PS/2 queue overflows while OVMF's
# keyboard timer lags; a shifted character is 4 bytes), which fails the
# walk. At the poll rate the queue never holds more than a few keys.
PASTE_CHAR_DELAY_MS = 50

# Keys 1-6 select these modes (§5.5); key 0 cycles every GOP mode.
MODE_KEYS = {'1': (640, 480), '2': (800, 600), '3': (1024, 768),
             '4': (1280, 720), '5': (1280, 1024), '6': (1920, 1080)}
DEFAULT_MODE = (1024, 768)

# Digest geometry (§2.2, §2.3).
DIGEST_REGION_PX = fbhash.REGION_PX
DIGEST_MODULE_PX = fbhash.MODULE_PX
DIGEST_FG = fbhash.FG
digest_origin = fbhash.digest_origin


def digest_rect(width, height):
    """(x0, y0, x1, y1) of the digest region, exclusive end."""
    x, y = digest_origin(width, height)
    return (x, y, x + DIGEST_REGION_PX, y + DIGEST_REGION_PX)
