"""The console verbs as command lines: parsing, dispatch and help.

`run(session, line, emit)` parses one line (`key ctrl+alt+delete`, `paste
sextant{HELLO_OPERATOR}`, `wait scene_transition to=parked`) and calls the
Session method; `emit(dict)` receives the intermediate results of the
streaming verbs (each beat of `walk`, each digest of `watch`, each chunk of
`serial --follow`); the return value is the verb's result. Errors are
session.ConsoleError (session.UsageError for a malformed line), already
readable and redacted.
"""

import argparse
import shlex

from kerbside_tempest_plugin.console import session as session_mod

UsageError = session_mod.UsageError

HELP = {
    'key': ('key NAME...', 'press keys in turn: names of sextant/keys.py '
            '(enter, esc, f5, left ...), single characters, or combos '
            'joined with + (ctrl+alt+delete, shift+tab)'),
    'type': ('type TEXT', 'type TEXT key by key (Shift where needed)'),
    'paste': ('paste TEXT', "ryll's paste; returns once ryll reports "
              'paste_completed'),
    'shot': ('shot [FILE]', 'save a PNG screenshot (default: the '
             "workdir's console/shot-NNN.png)"),
    'digest': ('digest [--save FILE]', 'decode the visual digest on the '
               'screen now: frame, scene, raw events, hashes, the '
               'framebuffer hash verdict'),
    'watch': ('watch [--count N] [--timeout S]', 'print each new digest '
              'until interrupted (Ctrl-C), N digests or S seconds'),
    'wait': ('wait KIND [FIELD=VALUE...] [--timeout S] [--all] '
             '[--unless "KIND FIELD=VALUE..."]',
             'wait for a digest showing a record (scene_transition '
             'to=parked, line_rendered row=21, paste_received '
             'correct=true), captured since the last input (--all: since '
             'the start); --unless: fail at once on that record instead'),
    'serial': ('serial [--new] [--follow [--timeout S]]', "the guest's "
               'serial output (--new: only what is new since the last '
               'serial; --follow: stream it until the guest stops)'),
    'drain': ('drain [--walk NAME] [--timeout S]', 'wait for the serial '
              'drain (Enter in Parked), parse it and check it against the '
              'walk and the digests seen'),
    'status': ('status', 'ryll, the guest, the control connection, the '
               'capture and the scene'),
    'walk': ('walk NAME [--no-drain]', 'run a scenario walk (canonical, '
             'wrong_paste, retry, mode_switch) beat by beat, then judge '
             'the drain'),
    'boot': ('boot', 'a fresh guest and ryll on the lane this console '
             'started'),
    'fault': ('fault [SPEC | --clear] [--console N]', 'arm a fault on '
              "the lane's fault relay (a lane up with --relay or --fault), "
              'e.g. "stall,channel=display,after=2,duration=20"; --clear '
              'drops them; alone: what it armed, fired and saw'),
    'help': ('help [VERB]', 'this list, or one verb'),
}
ORDER = ('key', 'type', 'paste', 'shot', 'digest', 'watch', 'wait',
         'serial', 'drain', 'status', 'walk', 'boot', 'fault', 'help')


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError('%s: %s (usage: %s)' % (
            self.prog, message, HELP[self.prog][0]))


def _parser(verb):
    return _Parser(prog=verb, add_help=False)


def help_text(verb=None):
    if verb:
        if verb not in HELP:
            raise UsageError('no verb %r; verbs: %s' % (verb,
                                                        ', '.join(ORDER)))
        usage, text = HELP[verb]
        return '%s\n    %s' % (usage, text)
    return '\n'.join('%-44s %s' % HELP[v] for v in ORDER) + \
        '\nquit (or Ctrl-D) leaves; a console that started its lane tears ' \
        'it down.'


def _text_arg(verb, rest):
    """The rest of the line, or one quoted token."""
    rest = rest.strip()
    if rest[:1] in ('"', "'"):
        try:
            parts = shlex.split(rest)
        except ValueError as e:
            raise UsageError('%s: %s' % (verb, e))
        if len(parts) != 1:
            raise UsageError('%s: quote the whole text, or none of it'
                             % verb)
        rest = parts[0]
    if not rest:
        raise UsageError('%s needs some text (usage: %s)' % (
            verb, HELP[verb][0]))
    return rest


def _value(text):
    low = text.lower()
    if low in ('true', 'false'):
        return low == 'true'
    try:
        return int(text, 0)
    except ValueError:
        pass
    if 'x' in low:
        a, _, b = low.partition('x')
        if a.isdigit() and b.isdigit():
            return (int(a), int(b))
    return text


def _fields(words):
    fields = {}
    for f in words:
        name, eq, value = f.partition('=')
        if not eq or not name:
            raise UsageError('wait: %r is not FIELD=VALUE' % f)
        fields[name] = _value(value)
    return fields


def parse(line):
    """(verb, rest of line) or None for a blank line or comment."""
    line = line.strip()
    if not line or line.startswith('#'):
        return None
    verb, _, rest = line.partition(' ')
    return verb.lower(), rest


def run(session, line, emit=None, stop=None, stream_timeout=None):
    """Run one command line on `session`; return the result dict.

    `stream_timeout`: the deadline of watch and serial --follow when the
    line gives none (a script has no Ctrl-C; the prompt passes None).
    """
    parsed = parse(line)
    if parsed is None:
        return None
    verb, rest = parsed
    emit = emit or (lambda _: None)
    if verb not in HELP:
        raise UsageError('unknown verb %r; verbs: %s (help VERB for one)'
                         % (verb, ', '.join(ORDER)))
    if verb in ('type', 'paste'):
        text = _text_arg(verb, rest)
        return _call(session, verb, getattr(session, verb), text)
    try:
        argv = shlex.split(rest)
    except ValueError as e:
        raise UsageError('%s: %s' % (verb, e))
    p = _parser(verb)
    if verb == 'key':
        p.add_argument('names', nargs='+')
        a = p.parse_args(argv)
        return _call(session, verb, session.key, a.names)
    if verb == 'shot':
        p.add_argument('file', nargs='?')
        return _call(session, verb, session.shot, p.parse_args(argv).file)
    if verb == 'digest':
        p.add_argument('--save')
        return _call(session, verb, session.digest,
                     p.parse_args(argv).save)
    if verb == 'watch':
        p.add_argument('--count', type=int)
        p.add_argument('--timeout', type=float)
        a = p.parse_args(argv)
        timeout = a.timeout if a.timeout is not None or a.count else \
            stream_timeout
        return _call(session, verb, session.watch, emit, a.count,
                     timeout, stop)
    if verb == 'wait':
        p.add_argument('kind')
        p.add_argument('fields', nargs='*')
        p.add_argument('--timeout', type=float)
        p.add_argument('--all', action='store_true')
        p.add_argument('--unless', action='append', default=[])
        a = p.parse_args(argv)
        unless = []
        for spec in a.unless:
            words = spec.split()
            if not words:
                raise UsageError('wait: --unless needs "KIND FIELD=VALUE.."')
            unless.append((words[0], _fields(words[1:])))
        return _call(session, verb, session.wait, a.kind,
                     _fields(a.fields), a.timeout, 0 if a.all else None,
                     unless)
    if verb == 'serial':
        p.add_argument('--follow', action='store_true')
        p.add_argument('--new', action='store_true')
        p.add_argument('--timeout', type=float)
        a = p.parse_args(argv)
        if a.follow:
            return _call(session, verb, session.serial_follow, emit,
                         stream_timeout if a.timeout is None else a.timeout,
                         stop)
        return _call(session, verb, session.serial, a.new)
    if verb == 'drain':
        p.add_argument('--walk')
        p.add_argument('--timeout', type=float,
                       default=session_mod.DRAIN_TIMEOUT)
        a = p.parse_args(argv)
        return _call(session, verb, session.drain, a.timeout, a.walk)
    if verb == 'status':
        p.parse_args(argv)
        return _call(session, verb, session.status)
    if verb == 'walk':
        p.add_argument('name')
        p.add_argument('--no-drain', action='store_true')
        a = p.parse_args(argv)
        return _call(session, verb, session.walk, a.name, emit,
                     not a.no_drain)
    if verb == 'boot':
        p.parse_args(argv)
        return _call(session, verb, session.boot)
    if verb == 'fault':
        p.add_argument('spec', nargs='?')
        p.add_argument('--clear', action='store_true')
        p.add_argument('--console', type=int)
        a = p.parse_args(argv)
        return _call(session, verb, session.fault, a.spec, a.clear,
                     a.console)
    p.add_argument('verb', nargs='?')
    return {'help': help_text(p.parse_args(argv).verb)}


def _call(session, verb, fn, *args):
    from kerbside_tempest_plugin.sextant import keys
    try:
        return fn(*args)
    except keys.UnknownKey as e:
        raise UsageError(session.explain(e, verb)) from None
    except session_mod.ConsoleError as e:
        raise type(e)(session.redactor.redact(str(e))) from None
    except Exception as e:
        raise session_mod.ConsoleError(session.explain(e, verb)) from None
