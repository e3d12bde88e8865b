"""Citations of external facts point at docs/contracts/, and hold there.

- No tracked file cites the notes outside the repository (the old
  ``../shared/spec`` pages), which a reader of the repository cannot open.
- Every ``docs/contracts/<page>.md §N`` in the tree, and every relative
  ``(<page>.md) §N`` between the contract pages, names a page that exists
  and a section heading that page has.
- The golden vectors restated in docs/contracts/sextant.md §3 decode with
  the project's codec to the values the page states.
"""

import os
import re
import subprocess

import pytest

from kerbside_tempest_plugin.digest import payload as pl
from unit_tests import digest_fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACTS = os.path.join(ROOT, 'docs', 'contracts')
SELF = 'unit_tests/test_docs_citations.py'   # its self-test cites bad ones

# Spelled in pieces so this file does not cite what it forbids.
_SPEC_DIR = 'shared' + '/spec'
_OLD_PAGES = ('sextant-contract', 'kerbside-lane', 'kerbside-ryll-live',
              'ecosystem')
FORBIDDEN = [
    (re.compile(re.escape(_SPEC_DIR)), 'the notes outside the repository'),
    (re.compile(r'\b(?:%s)\.md\b' % '|'.join(map(re.escape, _OLD_PAGES))),
     'a page of the notes outside the repository'),
]
# The ryll page kept its old name: outside docs/contracts/ only the bare
# (old) form is forbidden; the pages themselves link to it relatively.
BARE_RYLL = (re.compile(r'(?<![\w/(\[-])ryll-control-socket\.md'),
             'the old ryll notes (cite docs/contracts/ryll-control-socket.md)')

SECTION = r'§\s*(\d+(?:\.\d+)*)'
# A page, then one or more sections: "§1, §2.5 and §4", possibly across a
# wrapped comment line.
CITATION_RE = re.compile(
    r'docs/contracts/([\w.-]+\.md)'
    r'((?:[\s#*/,;()`-]*(?:and|or)?[\s#*/]*' + SECTION + r')+)')
LOCAL_RE = re.compile(
    r'\(([\w-]+\.md)\)((?:[\s,;`-]*(?:and|or)?\s*' + SECTION + r')+)')
NUMBER_RE = re.compile(SECTION)
HEADING_RE = re.compile(r'^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s', re.M)
TEXT_EXT = ('.py', '.md', '.c', '.h', '.sh', '.txt', '.cfg', '.ini',
            '.yaml', '.yml', '.toml', '.conf', '.sample', '.rst', '')
SKIP_DIRS = {'.git', '.venv', '.tox', '__pycache__', 'node_modules',
             '.eggs', 'build', 'dist', 'out'}


def _tracked_files():
    try:
        out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT,
                             capture_output=True, check=True,
                             timeout=30).stdout
        names = [n for n in out.decode().split('\0') if n]
    except (OSError, subprocess.SubprocessError):
        names = []
        for top, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS
                       and not d.endswith('.egg-info')]
            for name in files:
                names.append(os.path.relpath(os.path.join(top, name), ROOT))
    assert names, 'found no files under %s' % ROOT
    return sorted(n for n in names
                  if os.path.splitext(n)[1] in TEXT_EXT
                  and os.path.isfile(os.path.join(ROOT, n)))


def _read(rel):
    with open(os.path.join(ROOT, rel), 'rb') as f:
        data = f.read()
    return data.decode('utf-8', errors='replace')


def _line_of(text, pos):
    return text.count('\n', 0, pos) + 1


def _headings(page):
    path = os.path.join(CONTRACTS, page)
    if not os.path.isfile(path):
        return None
    return set(HEADING_RE.findall(_read(os.path.relpath(path, ROOT))))


def find_forbidden(rel, text):
    """[(line, reason)] for citations of notes outside the repository."""
    found = []
    rules = list(FORBIDDEN)
    if not rel.startswith('docs/contracts/'):
        rules.append(BARE_RYLL)
    for pattern, reason in rules:
        for m in pattern.finditer(text):
            found.append((_line_of(text, m.start()), reason))
    return found


def find_citations(rel, text):
    """[(line, page, section)] of contract citations in one file."""
    out = []
    for m in CITATION_RE.finditer(text):
        for n in NUMBER_RE.findall(m.group(2)):
            out.append((_line_of(text, m.start()), m.group(1), n))
    if rel.startswith('docs/contracts/'):
        for m in LOCAL_RE.finditer(text):
            for n in NUMBER_RE.findall(m.group(2)):
                out.append((_line_of(text, m.start()), m.group(1), n))
    return out


def check_citations(files):
    """Problems as readable strings, for every file in `files`."""
    problems = []
    cache = {}
    for rel in files:
        text = _read(rel)
        for line, page, section in find_citations(rel, text):
            if page not in cache:
                cache[page] = _headings(page)
            headings = cache[page]
            if headings is None:
                problems.append('%s:%d cites docs/contracts/%s, which does '
                                'not exist' % (rel, line, page))
            elif section not in headings:
                problems.append(
                    '%s:%d cites docs/contracts/%s §%s, which has no such '
                    'section heading' % (rel, line, page, section))
    return problems


def test_contract_pages_exist_with_numbered_sections():
    for page in ('README.md', 'sextant.md', 'ryll-control-socket.md',
                 'kerbside.md'):
        assert os.path.isfile(os.path.join(CONTRACTS, page)), page
    for page in ('sextant.md', 'ryll-control-socket.md', 'kerbside.md'):
        headings = _headings(page)
        assert len(headings) >= 10, (page, sorted(headings))


def test_no_file_cites_notes_outside_the_repository():
    problems = []
    for rel in _tracked_files():
        if rel == SELF:
            continue
        for line, reason in find_forbidden(rel, _read(rel)):
            problems.append('%s:%d cites %s' % (rel, line, reason))
    assert not problems, (
        'cite docs/contracts/<page>.md §N instead:\n  '
        + '\n  '.join(problems))


def test_every_contract_citation_resolves():
    files = [rel for rel in _tracked_files() if rel != SELF]
    # The new pages may not be committed yet when this runs; check them too.
    for name in sorted(os.listdir(CONTRACTS)):
        rel = 'docs/contracts/' + name
        if name.endswith('.md') and rel not in files:
            files.append(rel)
    problems = check_citations(files)
    assert not problems, '\n'.join(problems)


def test_the_checks_can_fail(tmp_path):
    text = ('# see ../' + _SPEC_DIR + '/sextant-contract.md §1\n'
            '# docs/contracts/sextant.md §1.4, §99.1 and §2\n'
            '# docs/contracts/nope.md §1\n'
            '# (`docs/contracts/kerbside.md` §77)\n'
            '# docs/contracts/ryll-control-socket.md\n#   §0.7\n')
    assert len(find_forbidden('x.py', text)) == 2
    cites = find_citations('x.py', text)
    assert ('sextant.md', '1.4') in [(p, s) for _, p, s in cites]
    assert ('sextant.md', '99.1') in [(p, s) for _, p, s in cites]
    assert ('sextant.md', '2') in [(p, s) for _, p, s in cites]
    assert ('ryll-control-socket.md', '0.7') in [(p, s) for _, p, s in cites]
    rel = os.path.relpath(str(tmp_path / 'x.py'), ROOT)
    with open(os.path.join(ROOT, rel), 'w') as f:
        f.write(text)
    problems = check_citations([rel])
    assert any('§99.1' in p for p in problems), problems
    assert any('nope.md' in p for p in problems), problems
    assert any('kerbside.md §77' in p for p in problems), problems
    assert not any('§1.4' in p or '§0.7' in p for p in problems), problems
    assert not any(p.endswith('§2, which has no such section heading')
                   for p in problems), problems


def _page_dumps():
    """{'3.1': bytes, ...} from the hex dumps under sextant.md §3.x."""
    text = _read('docs/contracts/sextant.md')
    dumps = {}
    for m in re.finditer(r'^### (3\.\d)\b(.*?)(?=^#{2,3} )', text,
                         re.M | re.S):
        block = re.search(r'```\n(.*?)```', m.group(2), re.S)
        if block:
            dumps[m.group(1)] = fx._dump(block.group(1))
    return dumps


@pytest.mark.parametrize('section,golden', [
    ('3.1', fx.GOLDEN_EMPTY),
    ('3.2', fx.GOLDEN_SINGLE_KEYPRESS),
    ('3.3', fx.GOLDEN_MIXED),
])
def test_sextant_page_vectors_are_the_codec_vectors(section, golden):
    dumps = _page_dumps()
    assert dumps.get(section) == golden, section
    pl.decode(dumps[section])


def test_sextant_page_vectors_decode_to_the_stated_values():
    dumps = _page_dumps()
    empty = pl.decode(dumps['3.1'])
    assert (len(dumps['3.1']), empty.frame_counter,
            empty.framebuffer_hash) == (62, 1, 0)
    one = pl.decode(dumps['3.2'])
    assert len(dumps['3.2']) == 76
    assert (one.frame_counter, one.framebuffer_hash) == (0x12345678,
                                                         0xCAFEBABE)
    assert one.hashes['keypress'] == 0x6f41545a
    assert one.events == (fx.SINGLE_KEYPRESS,)
    mixed = pl.decode(dumps['3.3'])
    assert len(dumps['3.3']) == 105
    assert (mixed.frame_counter, mixed.framebuffer_hash) == (0xDEADBEEF,
                                                             0x12345678)
    assert mixed.hashes == fx.MIXED_HASHES
    assert mixed.events == tuple(fx.MIXED_EVENTS[-3:])
