"""Shared plumbing for the console scripts: JSON out, one-line errors."""

import json
import sys

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2


def emit(obj, stream=None):
    stream = stream or sys.stdout
    stream.write(json.dumps(obj, sort_keys=False) + '\n')
    stream.flush()


def complain(prog, source, message):
    """One line on stderr: `prog: source: reason`."""
    text = ' '.join(str(message).split())
    sys.stderr.write('%s: %s: %s\n' % (prog, source, text))


def read_input(path, binary=False):
    """Read a file, or stdin for '-'."""
    if path == '-':
        return sys.stdin.buffer.read() if binary else sys.stdin.read()
    with open(path, 'rb' if binary else 'r') as f:
        return f.read()


def guarded(func, argv):
    """Run a CLI body; a closed stdout (`| head`) ends quietly."""
    import os
    try:
        return func(argv)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
