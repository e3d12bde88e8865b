"""The one atomic writer: a sibling tmp file, then os.replace.

A reader (another process, a crashed run's `down`) sees the old content
or the new, never half a file.
"""

import json
import os


def write_text(path, text, mode=None, encoding='utf-8'):
    """Write `text` to `path` atomically; `mode` (e.g. 0o600) is set on
    the tmp file before the rename. Returns `path`.
    """
    path = os.fspath(path)
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding=encoding) as f:
        if mode is not None:
            os.chmod(tmp, mode)
        f.write(text)
    os.replace(tmp, path)
    return path


def write_json(path, data, indent=1, sort_keys=False, default=None):
    """`data` as JSON (newline-terminated) to `path`, atomically."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys,
                      default=default)
    return write_text(path, text + '\n')
