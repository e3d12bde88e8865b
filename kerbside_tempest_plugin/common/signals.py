"""SIGTERM (and SIGHUP, SIGINT) as Ctrl-C: the owner's teardown runs.

A command that brings a lane up and holds it (`kerbside-harness up` while
it comes up, `console`, `mcp`, the benchmarks) tears it down in a
`finally:` (or an `except BaseException:`). Python runs those for
Ctrl-C (KeyboardInterrupt) but not for SIGTERM, whose default action
ends the process at once: a CI job timeout or `kill` then left
mariadbd, kerbside-proxy, qemu and ryll running. `install()` makes the
listed signals raise in the main thread instead:

- SIGINT raises KeyboardInterrupt (as Ctrl-C does; also when the
  process inherited SIGINT ignored, as a background job of a
  non-interactive shell does);
- every other signal raises SystemExit(128 + signum), the exit status a
  shell reports for it, which `except Exception` does not swallow and
  an interactive console loop (which stays up on Ctrl-C) does not
  catch.

The first signal raises; a repeat of any of them within `grace` seconds
(the teardown in progress) is written to standard error and ignored, so
a second SIGTERM from an impatient supervisor does not cut the teardown
short (SIGKILL still ends the process: the lane's reaper,
lane.reaper, then finishes the teardown). `shielded()` defers the
signals around a piece of work that must not be interrupted, from any
thread (signal.signal itself works only in the main thread).

For processes the harness does not own (a tempest worker under
`tox -e direct-qemu`, whatever stestr does with signals), the lane's
reaper is what guarantees the teardown.
"""

import contextlib
import os
import signal
import sys
import threading
import time

# The signals a lane-owning command turns into its teardown path; an
# interactive console keeps Ctrl-C for itself.
TEARDOWN_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# ... and a batch command (a benchmark), where Ctrl-C means stop.
BATCH_SIGNALS = TEARDOWN_SIGNALS + (signal.SIGINT,)
# A repeat within this many seconds of the first is ignored: the
# lane's teardown takes up to about a minute (lane.lane.teardown_workdir's
# per-process deadlines).
GRACE = 90.0

_lock = threading.Lock()
_state = {'first': None, 'installed': (), 'shield': 0, 'pending': None,
          'grace': GRACE}


def exception_for(signum):
    """The exception a signal raises: KeyboardInterrupt for SIGINT,
    else SystemExit(128 + signum).
    """
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return SystemExit(128 + signum)


def decide(signum, now, first, shield, grace=GRACE):
    """What the handler does with `signum` at `now` (monotonic), given the
    time of the first signal handled (`first`, or None) and whether a
    shield is up: 'defer' (remember it, re-raise once the shield is
    down), 'ignore' (a repeat during the teardown) or 'raise'.
    """
    if shield:
        return 'defer'
    if first is not None and now - first < grace:
        return 'ignore'
    return 'raise'


def _say(text):
    try:
        sys.stderr.write('%s (pid %d): %s\n' % (
            os.path.basename(sys.argv[0] or 'python'), os.getpid(), text))
        sys.stderr.flush()
    except Exception:
        pass


def _handler(signum, frame):
    now = time.monotonic()
    with _lock:
        what = decide(signum, now, _state['first'], _state['shield'],
                      _state['grace'])
        if what == 'defer':
            _state['pending'] = signum
        elif what == 'raise':
            _state['first'] = now
    name = signal.Signals(signum).name
    if what == 'defer':
        _say('%s received; deferred until the current step ends' % name)
        return
    if what == 'ignore':
        _say('%s received again; the teardown is already running '
             '(SIGKILL ends this process; the lane reaper then finishes '
             'the teardown)' % name)
        return
    _say('%s received: tearing down before exit' % name)
    raise exception_for(signum)


def install(signals=TEARDOWN_SIGNALS, grace=GRACE):
    """Make `signals` raise (see the module docstring) in this process.
    Call from the main thread; elsewhere it does nothing and returns ().
    Returns the signals installed. Idempotent.
    """
    if threading.current_thread() is not threading.main_thread():
        return ()
    done = []
    with _lock:
        _state['grace'] = grace
    for sig in signals:
        try:
            signal.signal(sig, _handler)
        except (ValueError, OSError):
            continue
        done.append(sig)
    with _lock:
        _state['installed'] = tuple(
            sorted(set(_state['installed']) | set(done)))
    return tuple(done)


def installed():
    """The signals install() has taken over in this process."""
    return _state['installed']


def reset():
    """Forget the signals handled so far and any deferred one (tests)."""
    with _lock:
        _state.update(first=None, shield=0, pending=None)


@contextlib.contextmanager
def shielded():
    """Defer the installed signals while the block runs (any thread); one
    that arrived meanwhile is delivered again when the last shield ends,
    and then raises in the main thread as usual.
    """
    with _lock:
        _state['shield'] += 1
    try:
        yield
    finally:
        with _lock:
            _state['shield'] -= 1
            pending = _state['pending'] if not _state['shield'] else None
            if pending is not None:
                _state['pending'] = None
        if pending is not None:
            signal.raise_signal(pending)
