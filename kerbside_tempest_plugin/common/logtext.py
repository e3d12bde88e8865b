"""Text for error messages: the one ANSI regex and the one tail function.
"""

import os
import re

# ECMA-48 escapes: CSI sequences (ESC [ params intermediates final) and
# the two-byte Fe escapes. Firmware, ryll's coloured log and the guest's
# serial output all go through this one pattern.
ANSI_RE = re.compile(r'\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])')


def strip_ansi(text):
    return ANSI_RE.sub('', text or '')


def tail_text(text, lines=15, limit=2000):
    """The last lines of `text`, ANSI escapes removed, for error messages.

    `limit` caps the characters kept (None: no cap).
    """
    out = '\n'.join(strip_ansi(text).splitlines()[-lines:])
    return out if limit is None else out[-limit:]


def tail_file(path, lines=15, limit=2000, max_bytes=64 * 1024,
              empty='<empty>'):
    """The tail of a file for an error message; never raises.

    Reads at most the last `max_bytes`; an empty result is `empty`.
    """
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode('utf-8', 'replace')
    except OSError as e:
        return '<cannot read %s: %s>' % (path, e)
    return tail_text(data, lines, limit) or empty
