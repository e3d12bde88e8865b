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

A process whose main loop the harness does not own (a tempest worker:
testtools, unittest and stestr decide what an exception raised in a
test does, and a class's cleanups run only when the next class starts)
uses `tear_down_on()` instead: the signal runs the registered teardowns
in the handler itself, then ends the process as the signal ends it by
default (a parent sees it killed by SIGTERM or SIGINT, as before), and
`forget()` once the owner's own teardown has run puts Python's handlers
back. The teardown has a deadline (`TEARDOWN_DEADLINE`, after which the
process exits anyway). For a SIGKILL, or an owner that never registered
(not the main thread), the lane's reaper is what guarantees the
teardown.
"""

import contextlib
import os
import signal
import sys
import threading
import time
import traceback

# The signals a lane-owning command turns into its teardown path; an
# interactive console keeps Ctrl-C for itself.
TEARDOWN_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# ... and a batch command (a benchmark), where Ctrl-C means stop.
BATCH_SIGNALS = TEARDOWN_SIGNALS + (signal.SIGINT,)
# ... and a process the harness does not own (tear_down_on()).
WORKER_SIGNALS = BATCH_SIGNALS
# A repeat within this many seconds of the first is ignored: the
# lane's teardown takes up to about a minute (lane.lane.teardown_workdir's
# per-process deadlines).
GRACE = 90.0

_lock = threading.Lock()
_state = {'first': None, 'installed': (), 'shield': 0, 'pending': None,
          'grace': GRACE}
# tear_down_on(): key -> (label, teardown), in registration order; the
# handlers it replaced, to put back; the teardown's deadline.
TEARDOWN_DEADLINE = 150.0
_owners = {}
_previous = {}


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


def _received(signum, work='step'):
    """Record `signum` as decide() says; say so and return False when it
    is deferred (until the current `work` ends) or a repeat, True when
    the handler is to act on it.
    """
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
        _say('%s received; deferred until the current %s ends'
             % (name, work))
    elif what == 'ignore':
        _say('%s received again; the teardown is already running '
             '(SIGKILL ends this process; the lane reaper then finishes '
             'the teardown)' % name)
    return what == 'raise'


def _handler(signum, frame):
    if not _received(signum):
        return
    _say('%s received: tearing down before exit'
         % signal.Signals(signum).name)
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


def down_shielded(lane):
    """`lane.down()`, which a signal does not cut short: one that arrives
    during it is deferred to its end (then raises as usual). Returns the
    down report.
    """
    with shielded():
        return lane.down()


# -- a process the harness does not own: tear down, then die of it ---------

def tear_down_on(key, teardown, label, signals=WORKER_SIGNALS,
                 deadline=TEARDOWN_DEADLINE):
    """Run `teardown()` (with every other registered one) when one of
    `signals` arrives, then end the process as that signal does by default
    (killed by it: the status a parent expects of a SIGTERM or Ctrl-C).
    `label` names what it tears down in the message on standard error.
    For a process whose main loop is not the harness's (a tempest worker:
    see the module docstring). A repeat within the grace is ignored, the
    signals are deferred under `shielded()` (the owner's own teardown),
    and after `deadline` seconds of teardown the process exits anyway
    (status 128 + signum; the lane's reaper then finishes).

    Main thread only: elsewhere it registers nothing and returns False
    (the signal keeps Python's behaviour; the reaper remains). Returns
    True once registered. `forget(key)` undoes it.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        _state['deadline'] = deadline
        _owners[key] = (label, teardown)
    for sig in signals:
        if sig in _previous:
            continue
        try:
            _previous[sig] = signal.signal(sig, _teardown_handler)
        except (ValueError, OSError):
            continue
    return True


def forget(key):
    """Drop `key`'s teardown (its owner has torn down itself). Once none
    is left, the handlers tear_down_on() replaced are put back. Returns
    whether `key` was registered; never raises.
    """
    with _lock:
        known = _owners.pop(key, None) is not None
        restore = {} if _owners else dict(_previous)
        if restore:
            _previous.clear()
    for sig, handler in restore.items():
        try:
            signal.signal(sig, handler if handler is not None
                          else signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    return known


def owners():
    """The labels of the teardowns registered with tear_down_on()."""
    with _lock:
        return [label for label, _ in _owners.values()]


def _fresh_streams():
    """Standard output and error as new line-buffered writers on copies
    of their descriptors, and logging's stream handlers moved to them.

    The handler runs where the signal found the main thread, which may be
    inside a write to a buffered stream (the worker printing a result when
    stestr's SIGTERM came): writing to that same stream from the handler
    raises "reentrant call inside <_io.BufferedWriter>", and the teardown
    fails. New stream objects hold no lock the interrupted code holds.
    """
    import logging
    swapped = {}
    for name in ('stdout', 'stderr'):
        old = getattr(sys, name)
        try:
            fd = old.fileno()
            new = os.fdopen(os.dup(fd), 'w', buffering=1,
                            encoding=getattr(old, 'encoding', None) or
                            'utf-8', errors='backslashreplace')
        except Exception:
            continue
        setattr(sys, name, new)
        swapped[id(old)] = new
    for logger in [logging.getLogger()] + [
            lg for lg in logging.Logger.manager.loggerDict.values()
            if isinstance(lg, logging.Logger)]:
        for h in logger.handlers:
            stream = getattr(h, 'stream', None)
            if isinstance(h, logging.StreamHandler) and \
                    id(stream) in swapped:
                h.stream = swapped[id(stream)]
                h.lock = threading.RLock()   # the old one may be held


def _teardown_handler(signum, frame):
    if not _received(signum, 'teardown'):
        return
    _fresh_streams()
    with _lock:
        todo = list(_owners.values())
        deadline = _state.get('deadline', TEARDOWN_DEADLINE)
    name = signal.Signals(signum).name
    # The reader of our standard output may be gone (stestr killed by the
    # same signal): a write to it must fail, not end us mid-teardown.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _say('%s received: tearing down %s before exit' % (
        name, ', '.join(label for label, _ in todo) or 'nothing'))
    watchdog = threading.Timer(deadline, _give_up, (signum, deadline))
    watchdog.daemon = True
    watchdog.start()
    for label, teardown in todo:
        try:
            teardown()
        except BaseException:
            _say('tearing down %s failed:\n%s' % (
                label, traceback.format_exc()))
    _say('torn down; exiting on %s' % name)
    die_of(signum)


def _give_up(signum, deadline):
    _say('the teardown did not end within %.0f s; exiting (the lane '
         'reaper finishes it)' % deadline)
    os._exit(128 + signum)


def die_of(signum):
    """End this process as `signum` does by default (killed by it), after
    flushing standard output and error; exit status 128 + signum should
    the signal not end it.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
        time.sleep(5)
    finally:
        os._exit(128 + signum)
