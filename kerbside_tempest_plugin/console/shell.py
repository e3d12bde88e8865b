"""`kerbside-harness console`: the verbs, by hand or from a script.

Interactive (a terminal on standard input): a `kerbside>` prompt, each
result printed as indented JSON (serial text and help as plain text),
Ctrl-C ends a streaming verb (watch, serial --follow) and stays in the
shell, `quit` or Ctrl-D leaves.

Non-interactive (`--script FILE`, or standard input that is not a
terminal): one JSON line per result on standard output,
``{"line": N, "verb": V, "ok": true, "result": {...}}``, one per
intermediate result of a streaming verb (``"event"`` instead of
``"result"``; watch and serial --follow end after 60 s unless the line
says otherwise), and on the first error ``{"ok": false, "error":
"..."}`` and exit status 1. The first line describes the lane
(``"verb": "lane"``). Blank lines and lines starting with # are skipped.

Either way the lane is torn down on exit when the console started it
(also on SIGTERM and SIGHUP, through common.signals, and after a SIGKILL
by console.guardian and the lane's own reaper, lane.reaper).
"""

import json
import logging
import sys
import threading

from kerbside_tempest_plugin.common import signals
from kerbside_tempest_plugin.console import session as session_mod
from kerbside_tempest_plugin.console import verbs

LOG = logging.getLogger(__name__)
PROMPT = 'kerbside> '
# watch and serial --follow in a script, without --timeout or --count.
SCRIPT_STREAM_TIMEOUT = 60.0


def open_session(args):
    """A Session from the console/mcp command-line arguments."""
    if args.attach:
        return session_mod.Session.attach(args.attach, own=args.down_on_exit)
    return session_mod.Session.start(
        provider=args.provider, route=args.route, workdir=args.workdir,
        config_file=args.config_file, ryll_binary=args.ryll,
        accel=args.accel, image=args.image,
        boot_timeout=args.boot_timeout,
        cloud_workdir=getattr(args, 'os_cloud_workdir', None),
        flavor=getattr(args, 'flavor', None),
        relay=getattr(args, 'relay', None), fault=getattr(args, 'fault',
                                                          None))


def lane_line(session, started):
    out = {'workdir': session.target.workdir, 'route': session.target.route,
           'owned': session.owned}
    out.update(started or {})
    return out


def run_script(session, lines, out, started=None):
    """Run command lines; one JSON line per result. 0, or 1 on the first
    error.
    """
    def write(obj):
        out.write(session_mod.dumps(obj, session.redactor) + '\n')
        out.flush()

    write({'line': 0, 'verb': 'lane', 'ok': True,
           'result': lane_line(session, started)})
    for n, line in enumerate(lines, 1):
        parsed = verbs.parse(line)
        if parsed is None:
            continue
        verb = parsed[0]
        if verb in ('quit', 'exit'):
            break

        def emit(event, n=n, verb=verb):
            write({'line': n, 'verb': verb, 'ok': True, 'event': event})
        try:
            result = verbs.run(session, line, emit,
                               stream_timeout=SCRIPT_STREAM_TIMEOUT)
        except session_mod.ConsoleError as e:
            write({'line': n, 'verb': verb, 'ok': False, 'error': str(e)})
            return 1
        write({'line': n, 'verb': verb, 'ok': True, 'result': result})
    return 0


def run_interactive(session, stdin, out, started=None):
    """The prompt loop. Returns 0 (errors are printed and the loop goes
    on: a person reads them).
    """
    try:
        import readline  # noqa: F401  (line editing for input())
    except ImportError:
        pass

    def show(obj):
        out.write(session.redactor.redact(
            json.dumps(obj, indent=1, sort_keys=True, default=str)) + '\n')
        out.flush()

    out.write('lane: %s\n%s\n' % (
        session_mod.dumps(lane_line(session, started), session.redactor),
        "type `help` for the verbs, `quit` to leave"))
    while True:
        try:
            line = input(PROMPT) if stdin is sys.stdin else \
                _prompt(stdin, out)
        except EOFError:
            out.write('\n')
            return 0
        except KeyboardInterrupt:
            out.write('\n')
            continue
        if line is None:
            return 0
        parsed = verbs.parse(line)
        if parsed is None:
            continue
        if parsed[0] in ('quit', 'exit'):
            return 0
        stop = threading.Event()
        try:
            result = verbs.run(session, line, show, stop)
        except session_mod.ConsoleError as e:
            out.write('error: %s\n' % e)
            continue
        except KeyboardInterrupt:
            stop.set()
            out.write('\ninterrupted\n')
            continue
        if parsed[0] == 'help':
            out.write(result['help'] + '\n')
        elif parsed[0] == 'serial' and 'text' in result:
            out.write(result['text'])
            if result['text'] and not result['text'].endswith('\n'):
                out.write('\n')
        else:
            show(result)


def _prompt(stdin, out):
    out.write(PROMPT)
    out.flush()
    line = stdin.readline()
    return line if line else None


def main(args):
    """The `console` subcommand. Exit status: 0, 1 on a failed verb (script
    mode) or a lane that would not come up.
    """
    _on_signals()
    try:
        session = open_session(args)
    except session_mod.ConsoleError as e:
        print('kerbside-harness console: %s' % e, file=sys.stderr)
        return 1
    started = session.started
    # A SIGKILL skips the finally below: the guardian still takes an
    # owned lane down once this process is gone.
    from kerbside_tempest_plugin.console import guardian as guardian_mod
    guard = None
    if guardian_mod.guards(session):
        guard = guardian_mod.Guardian().start()
        guard.own(session.target.workdir)
    try:
        if args.script:
            with open(args.script) as f:
                lines = f.read().splitlines()
            return run_script(session, lines, sys.stdout, started)
        if not sys.stdin.isatty():
            return run_script(session, sys.stdin, sys.stdout, started)
        return run_interactive(session, sys.stdin, sys.stdout, started)
    finally:
        report = session.close()
        if guard is not None:
            guard.release()
        if report:
            print('kerbside-harness console: lane torn down (%s)' %
                  session_mod.dumps(_short(report), session.redactor),
                  file=sys.stderr)


def _short(report):
    return {k: report.get(k) for k in ('leftover_pids', 'busy_ports',
                                       'seconds', 'problems')
            if k in report}


def _on_signals():
    """SIGTERM and SIGHUP end the console through its finally blocks
    (SystemExit), so an owned lane is torn down; Ctrl-C stays the shell's
    (it ends a streaming verb).
    """
    signals.install(signals.TEARDOWN_SIGNALS)
