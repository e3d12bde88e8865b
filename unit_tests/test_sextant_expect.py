"""The ordered-subsequence matcher and the canonical walk (§4.3)."""

import pytest

from kerbside_tempest_plugin.sextant import drain
from kerbside_tempest_plugin.sextant import expect
from unit_tests import sextant_fixtures as sf


def walk(**kwargs):
    return drain.parse(sf.canonical_log(**kwargs))


def test_canonical_walk_passes():
    ends = expect.check_canonical_walk(walk())
    assert len(ends) == len(expect.CANONICAL_WALK)


def test_stream_exercise_shape_passes():
    expect.check_canonical_walk(walk(stream_exercise=True))


def replace(old, new, count=1):
    return drain.parse(sf.canonical_log().replace(old, new, count))


def test_wrong_paste_names_item_and_shows_context():
    d = replace('paste len=23 correct=true', 'paste len=22 correct=false')
    with pytest.raises(expect.ExpectationError) as info:
        expect.check_canonical_walk(d)
    msg = str(info.value)
    assert msg.startswith('expected item 5 of 9 not found: '
                          'type=paste len=23 correct=true')
    assert 'choice=ignore attempt=1' in msg        # previous match
    assert 'type=paste len=22 correct=false' in msg  # what was there
    assert info.value.index == 4


def test_too_few_lines():
    lines = [ln for ln in sf.canonical_lines()
             if not ln.startswith('t=') or 'type=line' not in ln
             or int(ln.split('row=')[1]) < 5]
    d = drain.parse('\n'.join(lines))
    with pytest.raises(expect.ExpectationError) as info:
        expect.check_canonical_walk(d)
    assert 'at least 10 x (type=line)' in str(info.value)
    assert 'found only' in str(info.value)


def test_missing_terminator():
    d = drain.parse(sf.canonical_log().rsplit('type=refresh_stats', 1)[0])
    with pytest.raises(expect.ExpectationError) as info:
        expect.check_canonical_walk(d)
    assert 'refresh_stats' in str(info.value)


@pytest.mark.parametrize('old,new,first_line_says', [
    # The decision must be attempt 1 and follow the boot lines.
    ('choice=ignore attempt=1', 'choice=ignore attempt=2', 'attempt=1'),
    ('t=11050 type=transition', 't=50 type=transition', 'decrease'),
    ('from=booting to=parked', 'from=parked to=booting',
     'from=booting to=parked'),
    ('from=awaiting to=booting', 'from=awaiting to=parked',
     'from=awaiting to=booting'),
    ('from=parked to=parked', 'from=parked to=booting',
     'from=parked to=parked'),
])
def test_broken_walk_names_the_problem(old, new, first_line_says):
    with pytest.raises(expect.ExpectationError) as info:
        expect.check_canonical_walk(replace(old, new))
    assert first_line_says in str(info.value).splitlines()[0]


def test_first_item_missing_on_empty():
    with pytest.raises(expect.ExpectationError) as info:
        expect.match_ordered([], expect.CANONICAL_WALK)
    assert 'item 1 of 9' in str(info.value)
    assert 'no records there' in str(info.value)


def test_match_on_plain_dicts():
    recs = [{'type': 'line', 'row': 1, 't': 0},
            {'type': 'transition', 'from': 'parked', 'to': 'parked'}]
    expect.match_ordered(recs, [expect.Rec('line', row=1),
                                expect.transition('parked', 'parked')])
    with pytest.raises(expect.ExpectationError):
        expect.match_ordered(recs, [expect.transition('parked', 'parked'),
                                    expect.Rec('line')])
