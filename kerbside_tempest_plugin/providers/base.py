"""The guest-provider abstraction the scenario tests call.

A provider boots an image and hands back a `Guest`. Whatever the provider
(qemu started by the harness, Nova, Shaken Fist), a guest offers the same
things to a test:

- `console_vv()`: a *fresh* .vv for the configured console route. Kerbside
  console tokens live 60 s, so call it just before ryll starts.
- `serial`: a `SerialSource` that can be read, waited on and followed (a
  file for qemu; an API for the clouds).
- `artifact_dir`: where the guest's evidence is kept.
- `is_running()`, `wait_stopped(timeout)` and an idempotent `teardown()`
  that never raises over an original failure and keeps the artifacts.
- optionally `screendump(path)` (a hypervisor-side screenshot).

Nothing in this module knows about qemu or ryll; it imports only the
standard library and `common` (the errors, `wait_until`, the tails).
"""

import abc
import dataclasses
import re
import time

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import waiting


@dataclasses.dataclass(frozen=True)
class ConsoleRoute:
    """How a client reaches a guest's console. Holds no secret.

    `kind` is `kerbside` (through the Kerbside proxy; `source` and `uuid`
    name the console there) or `direct` (straight to the hypervisor's SPICE
    server). `host`, `port` and `tls_port` are where the client connects.
    """
    kind: str
    host: str
    port: int
    tls_port: int = None
    source: str = None
    uuid: str = None
    api_url: str = None

    def to_json(self):
        return {k: v for k, v in dataclasses.asdict(self).items()
                if v is not None}


class SerialSource(abc.ABC):
    """The guest's serial output: read, wait for a pattern, follow."""

    @abc.abstractmethod
    def read(self):
        """All serial output so far, as text (undecodable bytes replaced)."""

    def guest_running(self):
        """Whether more output can still come. Providers override this."""
        return True

    def describe(self):
        return 'serial output'

    def wait_for(self, pattern, timeout, start=0, strip_ansi=True):
        """Wait until `pattern` (a regex or compiled regex) matches the
        output from offset `start`; return the match.

        Raises HarnessTimeout, or GuestStopped when the guest stops without
        the pattern appearing; both carry the tail of the output.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        state = {}

        def probe():
            text = self.read()[start:]
            if strip_ansi:
                text = logtext.strip_ansi(text)
            state['text'] = text
            return regex.search(text)

        def stopped():
            if not self.guest_running():
                return 'the guest stopped'
            return None

        def seen():
            return '%s (%d chars; guest %s), tail:\n%s' % (
                self.describe(), len(state.get('text', '')),
                'running' if self.guest_running() else 'stopped',
                logtext.tail_text(state.get('text', '')))

        try:
            return waiting.wait_until(probe, timeout,
                                      '%r in %s' % (
                                          regex.pattern, self.describe()),
                                      seen=seen, interval=0.1, abort=stopped)
        except errors.HarnessTimeout:
            raise
        except errors.HarnessError as e:
            raise errors.GuestStopped(str(e)) from None

    def follow(self, timeout=None, interval=0.2, start=0):
        """Yield new output chunks as they arrive.

        Ends when the guest has stopped and everything was read, or when
        `timeout` seconds have passed (None: no limit, so the caller must
        stop iterating).
        """
        pos = start
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            running = self.guest_running()
            text = self.read()
            if len(text) > pos:
                yield text[pos:]
                pos = len(text)
            elif not running:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(interval)


class FileSerialSource(SerialSource):
    """Serial output a hypervisor writes to a file (qemu `-serial file:`)."""

    def __init__(self, path, running=None):
        self.path = path
        self._running = running

    def read(self):
        try:
            with open(self.path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return ''

    def guest_running(self):
        return True if self._running is None else bool(self._running())

    def describe(self):
        return 'serial log %s' % self.path


class Guest(abc.ABC):
    """A booted guest. Subclasses set `name`, `artifact_dir` and `serial`.

    What the scenario runner and the reports read, declared here so no
    caller probes with getattr:

    - `serial`: a SerialSource; `serial_path`: the file it reads, when
      there is one (qemu's `-serial file:`), else None;
    - `boot_seconds`: boot start to the banner, set by the lane that
      waited for it (None until then);
    - `accel`, `accel_reason`: the hypervisor's accelerator, when known;
    - `facts()`: the lines the report shows about the guest;
    - `describe()`: one line of state for a failure message.
    """

    name = None
    artifact_dir = None
    serial = None
    serial_path = None
    boot_seconds = None
    accel = None
    accel_reason = None

    def facts(self):
        """What the report shows about this guest (label -> text)."""
        if not self.accel:
            return {}
        return {'accelerator': '%s (%s)' % (self.accel,
                                            self.accel_reason or '')}

    def describe(self):
        return 'guest %s (%s)' % (
            self.name, 'running' if self.is_running() else 'stopped')

    @abc.abstractmethod
    def console_route(self, route=None):
        """The ConsoleRoute a client is sent to for `route` (default: the
        configured one). Holds no secret.
        """

    @abc.abstractmethod
    def console_vv(self, route=None):
        """A fresh .vv text for `route` (default: the configured one).

        The text carries a password: write it 0600 and never log it.
        """

    @abc.abstractmethod
    def is_running(self):
        """Whether the guest is still running."""

    def wait_stopped(self, timeout):
        """Wait until the guest has stopped; raise HarnessTimeout if not."""
        waiting.wait_until(lambda: not self.is_running(), timeout,
                           'guest %s to stop' % self.name,
                           seen=lambda: 'still running')

    @abc.abstractmethod
    def teardown(self):
        """Stop the guest and free what it held. Idempotent; never raises
        (it logs instead) and keeps the artifacts.
        """

    def screendump(self, path):
        """A hypervisor-side screenshot to `path` (PNG). Optional."""
        raise NotImplementedError(
            '%s has no hypervisor screendump' % type(self).__name__)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()
        return False


class GuestProvider(abc.ABC):
    """Boots guests. One provider per cloud or hypervisor."""

    name = None

    @abc.abstractmethod
    def boot(self, image, name, artifact_dir):
        """Boot `image` as a guest called `name`; return a Guest.

        Artifacts (serial log, hypervisor logs, screendumps) go under
        `artifact_dir`, which the provider creates when missing.
        """

    def cleanup(self):
        """Free what the provider itself holds (uploaded images, ...) once
        its guests are gone; never raises. Default: nothing.
        """
