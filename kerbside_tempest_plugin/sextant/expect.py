"""Expectations over drain records: an ordered-subsequence matcher.

An expectation is a sequence of items; each must match at or after the
position where the previous one matched. On failure ExpectationError names
the first item not found and shows the records around where it should have
been.
"""

from kerbside_tempest_plugin.sextant import contract


class ExpectationError(AssertionError):
    """The records do not contain the expected ordered subsequence."""

    def __init__(self, message, item=None, index=None, position=None):
        self.item = item
        self.index = index
        self.position = position
        super().__init__(message)


def _rec_type(record):
    return record.type if hasattr(record, 'type') else record['type']


def _rec_field(record, key):
    if key == 't':
        return record.t if hasattr(record, 't') else record.get('t')
    fields = record.fields if hasattr(record, 'fields') else record
    return fields.get(key)


def _describe_record(i, record):
    text = getattr(record, 'text', None)
    line = getattr(record, 'line_no', None)
    if text is None:
        text = ' '.join('%s=%s' % kv for kv in dict(record).items())
    return '#%d%s %s' % (i, ' (line %d)' % line if line else '', text)


class Item:
    def match(self, records, start):
        """Index just after the match at or after `start`, or None."""
        raise NotImplementedError

    def __str__(self):
        return self.describe()


class Rec(Item):
    """One record of `type` whose fields equal the given values."""

    def __init__(self, type_, **fields):
        self.type = type_
        # `from` is a keyword: allow from_=... too.
        self.fields = {k.rstrip('_'): v for k, v in fields.items()}

    def matches(self, record):
        if _rec_type(record) != self.type:
            return False
        return all(_rec_field(record, k) == v for k, v in self.fields.items())

    def match(self, records, start):
        for i in range(start, len(records)):
            if self.matches(records[i]):
                return i + 1
        return None

    def describe(self):
        return ' '.join(['type=%s' % self.type] + [
            '%s=%s' % (k, _fmt(v)) for k, v in self.fields.items()])


def _fmt(v):
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return '%dx%d' % tuple(v)
    return str(v)


class AtLeast(Item):
    """At least `n` records matching `item`, in order."""

    def __init__(self, n, item):
        self.n = n
        self.item = item

    def match(self, records, start):
        pos = start
        for _ in range(self.n):
            pos = self.item.match(records, pos)
            if pos is None:
                return None
        return pos

    def count_from(self, records, start):
        n, pos = 0, start
        while True:
            pos = self.item.match(records, pos)
            if pos is None:
                return n
            n += 1

    def describe(self):
        return 'at least %d x (%s)' % (self.n, self.item.describe())


class Seq(Item):
    """Items in order (a sub-expectation)."""

    def __init__(self, *items):
        self.items = items

    def match(self, records, start):
        pos = start
        for item in self.items:
            pos = item.match(records, pos)
            if pos is None:
                return None
        return pos

    def describe(self):
        return ' then '.join('(%s)' % i.describe() for i in self.items)


class Either(Item):
    """Any of the alternatives; the one that completes earliest wins."""

    def __init__(self, *alternatives):
        self.alternatives = alternatives

    def match(self, records, start):
        ends = [a.match(records, start) for a in self.alternatives]
        ends = [e for e in ends if e is not None]
        return min(ends) if ends else None

    def describe(self):
        return ' or '.join('[%s]' % a.describe() for a in self.alternatives)


def transition(from_, to):
    return Rec('transition', from_=from_, to=to)


# awaiting->booting, or via the newer stream-exercise scene (§1.9).
LEAVE_AWAITING = Either(
    transition(contract.AWAITING, contract.BOOTING),
    Seq(transition(contract.AWAITING, contract.STREAM_EXERCISE),
        transition(contract.STREAM_EXERCISE, contract.BOOTING)))

# Contract §4.3: the canonical walk Awaiting -> Enter -> Booting -> `i` ->
# paste -> Parked -> Enter.
CANONICAL_WALK = (
    Rec('keypress'),
    LEAVE_AWAITING,
    AtLeast(10, Rec('line')),
    Rec('bootloader_decision', choice=contract.IGNORE, attempt=1),
    Rec('paste', len=len(contract.PASTE_SECRET), correct=True),
    transition(contract.BOOTING, contract.PARKED),
    Rec('keypress'),
    transition(contract.PARKED, contract.PARKED),
    Rec(contract.REFRESH_STATS),
)


def _records_of(records):
    if hasattr(records, 'all_records'):
        return records.all_records()
    return list(records)


def match_ordered(records, expected, context=3):
    """Check `expected` is an ordered subsequence of `records`.

    `records` is a Drain (its events plus refresh_stats) or a list of
    records. Returns the list of end positions per item.
    """
    records = _records_of(records)
    pos = 0
    ends = []
    for index, item in enumerate(expected):
        end = item.match(records, pos)
        if end is None:
            raise ExpectationError(
                _failure(records, expected, index, item, pos, context),
                item, index, pos)
        ends.append(end)
        pos = end
    return ends


def _failure(records, expected, index, item, pos, context):
    lines = ['expected item %d of %d not found: %s'
             % (index + 1, len(expected), item.describe())]
    if index:
        lines.append('after item %d (%s) matched %s'
                     % (index, expected[index - 1].describe(),
                        _describe_record(pos - 1, records[pos - 1])))
    else:
        lines.append('searching from the first record')
    if isinstance(item, AtLeast):
        lines.append('found only %d matching record(s) after that'
                     % item.count_from(records, pos))
    elif isinstance(item, Rec):
        same = [(i, r) for i, r in enumerate(records)
                if i >= pos and _rec_type(r) == item.type][:3]
        if same:
            lines.append('type=%s records after that: %s' % (
                item.type, '; '.join(_describe_record(i, r)
                                     for i, r in same)))
    lo = max(0, pos - context)
    hi = min(len(records), pos + 2 * context)
    if lo == hi:
        lines.append('no records there (%d records in total)'
                     % len(records))
    else:
        lines.append('records around there (%d-%d of %d):'
                     % (lo, hi - 1, len(records)))
        for i in range(lo, hi):
            marker = '>' if i == pos else ' '
            lines.append('  %s %s'
                         % (marker, _describe_record(i, records[i])))
        if hi < len(records):
            lines.append('  ... %d more' % (len(records) - hi))
    return '\n'.join(lines)


def check_timestamps(records):
    """t never decreases across the event records."""
    last = None
    for i, record in enumerate(_records_of(records)):
        t = _rec_field(record, 't')
        if t is None:
            continue
        if last is not None and t < last[1]:
            raise ExpectationError(
                'timestamps decrease: %s then %s'
                % (_describe_record(last[0], last[2]),
                   _describe_record(i, record)))
        last = (i, t, record)


def check_canonical_walk(drain):
    """The full §4.3 oracle on a parsed drain."""
    if not drain.complete:
        tail = drain.records[-5:]
        raise ExpectationError(
            'drain incomplete: no type=refresh_stats terminator after %d '
            'record(s); last: %s' % (
                len(drain.records),
                '; '.join(r.text for r in tail) or 'none'))
    check_timestamps(drain)
    return match_ordered(drain, CANONICAL_WALK)
