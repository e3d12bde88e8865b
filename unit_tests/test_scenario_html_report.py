"""scenario.html_report on runs of the fake guest (the real-browser test is
unit_tests/integration/test_report_browser.py): the page's structure, that
every image it names is a file beside it, a rebuild from the directory
alone, the index, and a directory with nothing in it.
"""

import html.parser
import os

from kerbside_tempest_plugin.scenario import html_report
from kerbside_tempest_plugin.scenario import runner
from unit_tests import scenario_fakes as fakes


class Page(html.parser.HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.ids = []
        self.images = []
        self.links = []
        self.scripts = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if 'id' in attrs:
            self.ids.append(attrs['id'])
        if tag == 'img':
            self.images.append(attrs.get('src'))
        if tag == 'a':
            self.links.append(attrs.get('href'))
        if tag == 'script' and attrs.get('src'):
            self.scripts.append(attrs['src'])


def run(tmp_path, **kw):
    lane = fakes.FakeLane(str(tmp_path / 'lane'), **kw)
    result = runner.run_scenario(lane, 'canonical', 'direct', None,
                                 str(tmp_path / 'artifacts'),
                                 step_timeout=4, drain_timeout=10,
                                 log=lambda m: None)
    return result


def _page(result):
    path = os.path.join(result.artifact_dir, 'report.html')
    with open(path) as f:
        return Page(f.read()), f.name


def test_a_passing_page(tmp_path):
    result = run(tmp_path)
    assert result.passed, result.failure_message()
    page, path = _page(result)
    assert page.ids[0] == 'verdict'
    assert 'failures' not in page.ids
    assert 'timeline' in page.ids and 'checks' in page.ids
    assert 'frame' in page.ids and 'play' in page.ids
    assert page.scripts == []    # nothing loaded from elsewhere
    assert len(page.images) >= 6
    d = os.path.dirname(path)
    for src in page.images + page.links:
        assert '://' not in src, src
        assert os.path.exists(os.path.join(d, src)), src
    text = open(path).read()
    assert 'Verdict: PASS' in text.split('</div>')[0]


def test_a_failing_page_puts_the_failure_first(tmp_path):
    def deaf(fake):
        real = fake.handle

        def handle(c):
            if fake.state == 'paste' and c in '\r\n':
                return
            real(c)
        fake.handle = handle
    result = run(tmp_path, guest_hook=deaf)
    assert not result.passed
    page, path = _page(result)
    assert page.ids[:2] == ['verdict', 'failures']
    assert page.ids.index('failures') < page.ids.index('checks')
    for r in result.results:
        if not r.passed:
            assert 'failed-%s' % r.name in page.ids
    assert 'last-frames' in page.ids
    assert any('TIMEOUT' in src for src in page.images)
    # Rebuilt from the directory alone, the page is the same but for the
    # time it was written.
    before = open(path).read()
    os.unlink(path)
    html_report.build(os.path.dirname(path))
    after = open(path).read()
    strip = (lambda s: [x for x in s.splitlines()
                        if 'report written' not in x])
    assert strip(before) == strip(after)


def test_index_and_an_empty_directory(tmp_path):
    run(tmp_path)
    empty = tmp_path / 'artifacts' / 'crashed-run'
    empty.mkdir()
    html_report.build(str(empty))           # no result.json: still a page
    text = (empty / 'report.html').read_text()
    assert 'Verdict: FAIL' in text and 'timeline-empty' in text
    index = html_report.write_index(str(tmp_path / 'artifacts'))
    page = Page(open(index).read())
    assert len(page.links) == 2
    assert '1 of 2 passed' in open(index).read()
