"""The one deadline helper: poll until something is true or time runs out.
"""

import time

from kerbside_tempest_plugin.common import errors


def wait_until(predicate, timeout, what, seen=None, interval=0.1,
               abort=None):
    """Poll `predicate()` until it returns something truthy, and return it.

    `what` names what is awaited; `seen()` returns a description of the
    current state for the timeout message (tail of a log, process alive?).
    `abort()` may return a reason string to give up early (for example a
    process that died); it raises HarnessError with the same detail.
    """
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value
        if abort is not None:
            reason = abort()
            if reason:
                # One last look: the thing may have happened just before.
                value = predicate()
                if value:
                    return value
                raise errors.HarnessError(
                    'gave up waiting for %s after %.1f s: %s%s' % (
                        what, time.monotonic() - start, reason,
                        describe(seen)))
        if time.monotonic() >= deadline:
            raise errors.HarnessTimeout(
                'timed out after %.1f s waiting for %s%s' % (
                    timeout, what, describe(seen)))
        time.sleep(interval)


def describe(seen):
    """'; seen: <what seen() says>' for a timeout message, never raising."""
    if seen is None:
        return ''
    try:
        detail = seen()
    except Exception as e:  # the description must never hide the timeout
        detail = '<could not describe state: %r>' % e
    return '; seen: %s' % detail if detail else ''
