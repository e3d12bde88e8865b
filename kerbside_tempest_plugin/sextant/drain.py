"""Serial drain parser (docs/contracts/sextant.md §4.2).

The serial log holds more than the drain: the banner, the GOP-mode line and
possibly firmware text with ANSI escapes. Only lines whose tokens are all
`key=value` and include `type=` are records; everything else is skipped.
A record line that breaks the grammar raises SerialParseError naming the
line number and the text. `type=refresh_stats` terminates the drain.
"""

import dataclasses
import re
import typing

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.sextant import contract

ANSI_RE = logtext.ANSI_RE
TOKEN_RE = re.compile(r'^([a-z][a-z0-9_]*)=(\S*)$')
DEC_RE = re.compile(r'^[0-9]+$')
HEX4_RE = re.compile(r'^[0-9a-f]{4,}$')
SIZE_RE = re.compile(r'^([0-9]+)x([0-9]+)$')
U64 = 2 ** 64 - 1
U32 = 2 ** 32 - 1


class SerialParseError(errors.HarnessError, ValueError):
    """A line that looks like a drain record but breaks the grammar."""

    def __init__(self, line_no, text, reason):
        self.line_no = line_no
        self.text = text
        self.reason = reason
        super().__init__('serial line %d: %s: %r' % (line_no, reason, text))


def _dec(limit):
    def parse(value):
        if not DEC_RE.match(value):
            raise ValueError('expected a decimal number')
        n = int(value)
        if n > limit:
            raise ValueError('%d does not fit' % n)
        return n
    return parse


def _hex(min_digits, max_digits, limit):
    def parse(value):
        if not HEX4_RE.match(value) or not (
                min_digits <= len(value) <= max_digits):
            raise ValueError('expected %s lowercase hex digits'
                             % ('%d' % min_digits if min_digits == max_digits
                                else 'at least %d' % min_digits))
        n = int(value, 16)
        if n > limit:
            raise ValueError('0x%x does not fit' % n)
        return n
    return parse


def _enum(choices):
    def parse(value):
        if value not in choices:
            raise ValueError('expected one of %s' % '|'.join(choices))
        return value
    return parse


def _bool(value):
    if value not in ('true', 'false'):
        raise ValueError('expected true|false')
    return value == 'true'


def _size(value):
    m = SIZE_RE.match(value)
    if not m:
        raise ValueError('expected WxH')
    w, h = int(m.group(1)), int(m.group(2))
    if w > U32 or h > U32:
        raise ValueError('size does not fit')
    return [w, h]


# type -> ordered (field, parser); `t` precedes all but refresh_stats.
GRAMMAR = {
    'keypress': (('unicode', _hex(4, 8, 0x10FFFF)),
                 ('scancode', _hex(4, 4, 0xFFFF))),
    'line': (('row', _dec(U64)),),
    'transition': (('from', _enum(contract.PHASES)),
                   ('to', _enum(contract.PHASES))),
    'bootloader_decision': (('choice', _enum(contract.CHOICES)),
                            ('attempt', _dec(U32))),
    'paste': (('len', _dec(U64)), ('correct', _bool)),
    'bootloader_timeout': (),
    'mode_switch': (('requested', _size), ('applied', _size)),
    'mode_cycle': (('count', _dec(U32)), ('interrupted', _bool)),
    contract.REFRESH_STATS: tuple(
        (k, _dec(U64)) for k in ('count', 'total_ms', 'mean_us', 'max_us',
                                 'p99_us')),
}


@dataclasses.dataclass(frozen=True)
class DrainRecord:
    line_no: int
    type: str
    t: typing.Optional[int]
    fields: typing.Dict[str, typing.Any]
    text: str

    def __getitem__(self, key):
        return self.fields[key]

    def to_json(self):
        out = {'type': self.type}
        if self.t is not None:
            out['t'] = self.t
        out.update(self.fields)
        return out

    def to_event(self):
        """The digest event this record was drained from.

        Serial field names are the events' JSON names, so the events' WIRE
        tables say which field feeds which attribute.
        """
        cls = ev.BY_SERIAL_TYPE.get(self.type)
        if cls is None:
            raise ValueError('%s record is not an event' % self.type)
        if cls is ev.ModeSwitch:
            return cls(self.t, *self.fields['requested'],
                       *self.fields['applied'])
        return cls(self.t, *(self.fields[name]
                             for _, _, _, name in cls.WIRE))

    def describe(self):
        return 'line %d: %s' % (self.line_no, self.text)


@dataclasses.dataclass
class Drain:
    records: typing.List[DrainRecord]
    refresh_stats: typing.Optional[DrainRecord]
    banner_seen: bool = False
    gop_modes: typing.Optional[typing.List[typing.Tuple[int, int]]] = None
    ignored_after_terminator: int = 0

    @property
    def complete(self):
        return self.refresh_stats is not None

    def all_records(self):
        """Event records then the refresh_stats terminator (if present)."""
        if self.refresh_stats is None:
            return list(self.records)
        return list(self.records) + [self.refresh_stats]

    def to_events(self, upto=None):
        """Replay the event records (optionally the first `upto`)."""
        records = self.records if upto is None else self.records[:upto]
        return [r.to_event() for r in records]


RECORD_START_RE = re.compile(r'^(t|type)=')


def _is_record(line):
    """A record starts with `t=` or `type=` and has a `type=` token.

    Anything else (banner, GOP line, firmware text) is not a record. A
    candidate that breaks the grammar is an error, not skipped, so a
    corrupted drain line can never vanish silently.
    """
    return bool(RECORD_START_RE.match(line)) and (
        line.startswith('type=') or ' type=' in line)


def _split_record(line, line_no):
    pairs = []
    for tok in line.split():
        m = TOKEN_RE.match(tok)
        if not m:
            raise SerialParseError(line_no, line,
                                   'token %r is not key=value' % tok)
        pairs.append((m.group(1), m.group(2)))
    return pairs


def parse_record(line, line_no=0):
    """Parse one record line; SerialParseError when it breaks the grammar."""
    if not _is_record(line):
        raise SerialParseError(line_no, line, 'not a drain record')
    pairs = _split_record(line, line_no)
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise SerialParseError(line_no, line, 'repeated key')
    values = dict(pairs)
    rtype = values['type']
    grammar = GRAMMAR.get(rtype)
    if grammar is None:
        raise SerialParseError(line_no, line,
                               'unknown record type %r' % rtype)
    expect = [name for name, _ in grammar]
    if rtype == contract.REFRESH_STATS:
        expect = ['type'] + expect
        t = None
    else:
        expect = ['t', 'type'] + expect
    if keys != expect:
        raise SerialParseError(
            line_no, line, 'expected keys %s, got %s'
            % (' '.join(expect), ' '.join(keys)))
    if rtype != contract.REFRESH_STATS:
        try:
            t = _dec(U64)(values['t'])
        except ValueError as e:
            raise SerialParseError(line_no, line, 't=: %s' % e) from None
    fields = {}
    for name, parser in grammar:
        try:
            fields[name] = parser(values[name])
        except ValueError as e:
            raise SerialParseError(line_no, line,
                                   '%s=: %s' % (name, e)) from None
    return DrainRecord(line_no, rtype, t, fields, line)


def _gop_modes(line):
    modes = []
    for tok in line[len(contract.GOP_MODES_PREFIX):].split():
        m = SIZE_RE.match(tok)
        if m:
            modes.append((int(m.group(1)), int(m.group(2))))
    return modes


def parse(text) -> Drain:
    """Parse a whole serial log (str or bytes; CRLF or LF)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode('utf-8', errors='replace')
    drain = Drain(records=[], refresh_stats=None)
    for line_no, raw in enumerate(text.split('\n'), start=1):
        line = ANSI_RE.sub('', raw).rstrip('\r').strip()
        if not line:
            continue
        if drain.complete:
            if _is_record(line):
                drain.ignored_after_terminator += 1
            continue
        if line == contract.BANNER or line.endswith(contract.BANNER):
            drain.banner_seen = True
            continue
        if line.startswith(contract.GOP_MODES_PREFIX):
            drain.gop_modes = _gop_modes(line)
            continue
        if not _is_record(line):
            continue
        record = parse_record(line, line_no)
        if record.type == contract.REFRESH_STATS:
            drain.refresh_stats = record
        else:
            drain.records.append(record)
    return drain


def parse_file(path) -> Drain:
    with open(path, 'rb') as f:
        return parse(f.read())
