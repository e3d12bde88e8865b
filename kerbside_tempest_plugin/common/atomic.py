"""The one atomic writer: a sibling tmp file, then os.replace.

A reader (another process, a crashed run's `down`) sees the old content
or the new, never half a file.
"""

import json
import os
import tempfile


def write_text(path, text, mode=None, encoding='utf-8'):
    """Write `text` to `path` atomically; `mode` (e.g. 0o600, default
    0o644) is set on the tmp file before the rename. Returns `path`.
    """
    return write_bytes(path, text.encode(encoding), mode)


def write_bytes(path, data, mode=None):
    """`data` to `path` atomically, the file's mode `mode` (default
    0o644). The tmp file is this writer's own: two writers of one path
    at once (a lane's own teardown and a detached `down`) must not share
    one, or the loser's longer text shows through the winner's.
    """
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + '.',
                               suffix='.tmp', dir=os.path.dirname(path) or '.')
    try:
        with os.fdopen(fd, 'wb') as f:
            os.chmod(tmp, 0o644 if mode is None else mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_json(path, data, indent=1, sort_keys=False, default=None):
    """`data` as JSON (newline-terminated) to `path`, atomically."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys,
                      default=default)
    return write_text(path, text + '\n')
