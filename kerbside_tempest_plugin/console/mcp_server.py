"""`kerbside-harness mcp`: the console verbs as MCP tools, over stdio.

Built on the `mcp` package (the `mcp` extra: pip install
"kerbside-tempest-plugin[mcp]"), imported only by `build_server()`, so a
missing package never breaks tempest discovery or the other commands.

One server process is one session, and owns at most one lane:
`boot_lane` starts one (or gives a fresh guest on it), `attach_lane`
adopts a `kerbside-harness up` workdir. The tools are those of
console.session (send_keys, type_text, paste, screenshot as an image
content item, digest and wait_for as structured JSON, read_serial, drain,
status, walk) and `teardown`. When the client disconnects the lane is
torn down: a direct-qemu lane by console.guardian, a process of its own
session that runs the workdir teardown once this server is gone (the
SDK's client closes our input, waits two seconds, then kills our process
group, whatever a tool is still doing, and a lane takes longer than that
to stop); any other lane in process, with SIGTERM deferred meanwhile
(common.signals.shielded).

Every tool result and error message goes through the lane's redactor: no
SPICE ticket, JWT or .vv password leaves through a tool.
"""

import logging
import sys
import threading
import typing

from kerbside_tempest_plugin.console import session as session_mod
from kerbside_tempest_plugin.console import verbs

LOG = logging.getLogger(__name__)

INSTRUCTIONS = (
    'Drive a SPICE console through Kerbside: boot_lane (or attach_lane) '
    'first; then send_keys, type_text, paste; screenshot and digest show '
    'the screen (the digest is the guest\'s own account: frame counter, '
    'recent events, channel hashes, the framebuffer hash verdict); '
    'wait_for waits for a digest record; read_serial and drain read the '
    'guest\'s serial log and its event drain after the Enter in Parked. '
    'The Sextant walk: Awaiting, Enter, wait line_rendered row=21, i, '
    'paste sextant{HELLO_OPERATOR}, Enter, wait scene_transition '
    'to=parked, Enter (the guest drains and powers off).')


class Holder:
    """The one session of this server, and its teardown."""

    def __init__(self, defaults, guardian=None):
        self.defaults = defaults
        self.session = None
        self.lock = threading.RLock()
        self.guardian = guardian

    def adopt(self, session):
        """Hold `session`; a direct-qemu lane it owns goes to the
        guardian, which tears it down however this process ends.
        """
        self.session = session
        if self.guardian is not None and _guarded(session):
            self.guardian.own(session.target.workdir)

    def get(self):
        if self.session is None:
            raise session_mod.ConsoleError(
                'no lane yet: call boot_lane (start one) or attach_lane '
                '(a kerbside-harness up workdir) first')
        return self.session

    def call(self, verb, fn):
        """Run fn(session) under the lock; errors as readable ToolErrors."""
        from mcp.server.mcpserver import exceptions
        with self.lock:
            try:
                s = self.get()
                out = fn(s)
            except session_mod.ConsoleError as e:
                raise exceptions.ToolError(self.redact(str(e))) from None
            except Exception as e:
                msg = self.session.explain(e, verb) if self.session else \
                    '%s: %s' % (verb, e)
                raise exceptions.ToolError(self.redact(msg)) from None
            return self.redact_obj(out)

    def redact(self, text):
        return self.session.redactor.redact(text) if self.session else text

    def redact_obj(self, obj):
        if self.session is None:
            return obj
        r = self.session.redactor
        if isinstance(obj, dict):
            return {k: self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.redact_obj(v) for v in obj]
        if isinstance(obj, str):
            return r.redact(obj)
        return obj

    def disconnect(self):
        """The client went away: tear the lane down (see the module doc).

        A tool may still be running (a long wait_for) and hold the lock;
        the teardown does not wait for it: closing the session stops the
        capture, which ends the tool's wait.
        """
        got = self.lock.acquire(timeout=0.5)
        try:
            s, self.session = self.session, None
        finally:
            if got:
                self.lock.release()
        if s is None:
            return None
        if self.guardian is not None and _guarded(s):
            # The guardian tears the lane down once this process is gone.
            s.close(teardown=False)
            return {'teardown': 'guardian pid %d' % self.guardian.proc.pid}
        # signal.signal works only in the main thread, and this runs in
        # a worker thread (the lifespan's to_thread).
        from kerbside_tempest_plugin.common import signals
        with signals.shielded():
            return s.close()


def _guarded(session):
    from kerbside_tempest_plugin.console import guardian
    return guardian.guards(session)


def build_server(defaults=None, guardian=None):
    """The MCPServer with every tool, and its Holder."""
    try:
        from mcp.server.mcpserver import Image
        from mcp.server.mcpserver import MCPServer
    except ImportError as e:
        raise session_mod.ConsoleError(
            'kerbside-harness mcp needs the mcp package (>= 2): pip install '
            '"kerbside-tempest-plugin[mcp]" (%s)' % e)
    import contextlib

    holder = Holder(defaults or {}, guardian)

    @contextlib.asynccontextmanager
    async def lifespan(_server):
        try:
            yield {}
        finally:
            import anyio
            await anyio.to_thread.run_sync(holder.disconnect)

    server = MCPServer('kerbside-console', instructions=INSTRUCTIONS,
                       lifespan=lifespan)
    Any = typing.Any

    @server.tool()
    def boot_lane(provider: str = 'direct_qemu', route: str = 'kerbside',
                  image: typing.Optional[str] = None,
                  workdir: typing.Optional[str] = None) -> dict[str, Any]:
        """Start a lane (provider direct_qemu, shakenfist or nova, route
        kerbside or direct) with a fresh Sextant guest and ryll on its
        console; on a lane this session already owns, boot a fresh guest
        instead. nova: the cloud of the server's --os-cloud-workdir, or
        its OS_* environment.
        """
        from mcp.server.mcpserver import exceptions
        with holder.lock:
            if holder.session is not None:
                return holder.call('boot_lane', lambda s: s.boot(image=image))
            d = holder.defaults
            try:
                holder.adopt(session_mod.Session.start(
                    provider=provider, route=route,
                    workdir=workdir or d.get('workdir'), image=image,
                    config_file=d.get('config_file'),
                    ryll_binary=d.get('ryll', 'ryll'),
                    accel=d.get('accel', 'auto'),
                    cloud_workdir=d.get('os_cloud_workdir'),
                    flavor=d.get('flavor')))
            except Exception as e:
                raise exceptions.ToolError(
                    str(e) if isinstance(e, session_mod.ConsoleError) else
                    'boot_lane: %s: %s' % (type(e).__name__, e)) from None
            return holder.call('boot_lane', lambda s: dict(
                s.started, workdir=s.target.workdir, route=s.target.route))

    @server.tool()
    def attach_lane(workdir: str, own: bool = True) -> dict[str, Any]:
        """Attach to the lane `kerbside-harness up` left in `workdir`
        (own=True: tear it down when this session ends).
        """
        from mcp.server.mcpserver import exceptions
        with holder.lock:
            if holder.session is not None:
                raise exceptions.ToolError(
                    'this session already has a lane (%s); one session '
                    'owns one lane' % holder.session.target.workdir)
            try:
                holder.adopt(session_mod.Session.attach(workdir, own=own))
            except session_mod.ConsoleError as e:
                raise exceptions.ToolError(str(e)) from None
            return holder.call('attach_lane', lambda s: s.status())

    @server.tool()
    def send_keys(keys: list[str]) -> dict[str, Any]:
        """Press keys in turn: names as sextant/keys.py knows them (enter,
        esc, f5, left, ...), single characters, or combos like
        ctrl+alt+delete.
        """
        return holder.call('send_keys', lambda s: s.key(keys))

    @server.tool()
    def type_text(text: str) -> dict[str, Any]:
        """Type text key by key (Shift held where needed)."""
        return holder.call('type_text', lambda s: s.type(text))

    @server.tool()
    def paste(text: str) -> dict[str, Any]:
        """ryll's paste; returns once ryll reports paste_completed."""
        return holder.call('paste', lambda s: s.paste(text))

    @server.tool()
    def screenshot() -> Image:
        """The console screen now, as a PNG image."""
        png = holder.call('screenshot', lambda s: s.screenshot()[0])
        return Image(data=png, format='png')

    @server.tool()
    def digest() -> dict[str, Any]:
        """Decode the visual digest on the screen now: frame counter,
        scene, the raw events, channel hashes, framebuffer hash verdict.
        """
        return holder.call('digest', lambda s: s.digest())

    @server.tool()
    def wait_for(kind: str,
                 fields: typing.Optional[dict[str, typing.Union[
                     bool, int, str]]] = None,
                 timeout: float = 90.0,
                 since_start: bool = False,
                 unless_kind: typing.Optional[str] = None,
                 unless_fields: typing.Optional[dict[str, typing.Union[
                     bool, int, str]]] = None) -> dict[str, Any]:
        """Wait for a digest showing a record of `kind` (scene_transition,
        line_rendered, bootloader_decision, paste_received, keypress,
        mode_switch ...) whose fields match (e.g. {"to": "parked"},
        {"row": 21}), captured since the last input (or since the start).
        With unless_kind (and unless_fields), a digest showing that record
        ends the wait at once as an error (e.g. paste_received
        {"correct": false} while waiting for Parked).
        """
        def conv(d):
            return {k: verbs._value(v) if isinstance(v, str) else v
                    for k, v in (d or {}).items()}
        unless = [(unless_kind, conv(unless_fields))] if unless_kind else []
        return holder.call('wait_for', lambda s: s.wait(
            kind, conv(fields), timeout, 0 if since_start else None,
            unless))

    @server.tool()
    def read_serial(new_only: bool = False) -> dict[str, Any]:
        """The guest's serial output (new_only: since the last read)."""
        return holder.call('read_serial', lambda s: s.serial(new_only))

    @server.tool()
    def drain(walk: str = 'canonical', timeout: float = 60.0
              ) -> dict[str, Any]:
        """Wait for the guest's serial event drain (Enter in Parked),
        parse it and check it against `walk` and the digests seen.
        """
        return holder.call('drain', lambda s: s.drain(timeout, walk))

    @server.tool()
    def fault(spec: typing.Optional[str] = None, clear: bool = False,
              console: typing.Optional[int] = None) -> dict[str, Any]:
        """Arm a fault on the lane's SPICE fault relay (a lane brought up
        with a relay), e.g. "drop,channel=inputs,type=key_down,nth=2" or
        "stall,channel=display,after=2,duration=20"; clear drops them;
        neither: what the relay armed, fired and saw.
        """
        return holder.call('fault', lambda s: s.fault(spec, clear, console))

    @server.tool()
    def status() -> dict[str, Any]:
        """ryll, the guest, the control connection, capture and scene."""
        return holder.call('status', lambda s: s.status())

    @server.tool()
    def walk(name: str = 'canonical') -> dict[str, Any]:
        """Run a scenario walk (canonical, wrong_paste, retry,
        mode_switch) beat by beat; returns the beats and the drain.
        """
        def run(s):
            beats = []
            out = s.walk(name, emit=beats.append)
            out['beat_log'] = beats
            return out
        return holder.call('walk', run)

    @server.tool()
    def teardown() -> dict[str, Any]:
        """Disconnect and tear the lane down now (when this session owns
        it); a later boot_lane starts a new one.
        """
        with holder.lock:
            s, holder.session = holder.session, None
        if s is None:
            return {'torn_down': False, 'reason': 'no lane'}
        report = s.close()
        if holder.guardian is not None:
            holder.guardian.release()
        out = {'torn_down': report is not None, 'owned': s.owned}
        if report:
            out.update({k: report.get(k) for k in (
                'leftover_pids', 'busy_ports', 'seconds', 'problems')
                if k in report})
        return out

    return server, holder


def main(args):
    """The `mcp` subcommand: serve over stdio until the client leaves.
    SIGTERM and SIGHUP end it through the same disconnect (SystemExit).
    """
    from kerbside_tempest_plugin.common import signals
    from kerbside_tempest_plugin.console import guardian
    signals.install(signals.TEARDOWN_SIGNALS)
    try:
        server, holder = build_server({
            'workdir': args.workdir, 'config_file': args.config_file,
            'ryll': args.ryll, 'accel': args.accel,
            'os_cloud_workdir': getattr(args, 'os_cloud_workdir', None),
            'flavor': getattr(args, 'flavor', None)},
            guardian=guardian.Guardian().start())
    except session_mod.ConsoleError as e:
        print('kerbside-harness mcp: %s' % e, file=sys.stderr)
        return 1
    try:
        server.run('stdio')
    finally:
        # The lifespan's disconnect has usually run; after a signal the
        # event loop may have ended before it did (idempotent).
        holder.disconnect()
    return 0
