"""Private run directories: /tmp/ktp-run-[<tag>-]XXXXXXXX.

Lanes and clouds put their unix sockets (ryll's control socket, the
Kerbside daemon's gRPC socket, MariaDB's) in a short private directory
when the workdir's path is too long for a socket path (about 108 bytes).
`KTP_RUN_TAG` (letters and digits), when set, goes into the name, so a
test suite can tell its own directories from those of another lane on
the same machine (unit_tests/conftest.py sets it per pytest session).
"""

import os
import re
import tempfile

PREFIX = 'ktp-run-'


def tag():
    return re.sub(r'[^A-Za-z0-9]', '', os.environ.get('KTP_RUN_TAG', ''))[:16]


def prefix(run_tag=None):
    """The name prefix of run directories made under `run_tag`
    (default: this process's KTP_RUN_TAG).
    """
    run_tag = tag() if run_tag is None else run_tag
    return PREFIX + ('%s-' % run_tag if run_tag else '')


def make():
    """A new 0700 run directory in the temporary directory."""
    return tempfile.mkdtemp(prefix=prefix())


def is_run_dir(path):
    """Whether `path` is named like a run directory (any tag)."""
    return os.path.basename(path).startswith(PREFIX)
