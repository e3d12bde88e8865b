"""ryll's evidence and report.html of real runs, opened in a real browser.

One lane with Kerbside (MariaDB, Kerbside, qemu + OVMF, ryll 0.3.0) runs
two real scenario walks: the canonical walk through the Kerbside proxy
(it passes), and the canonical walk straight to qemu with a 2.5 s beat
deadline, which expires at the bootloader prompt (the guest needs about
4.5 s to print its boot lines under TCG), so the run fails the way a
real regression does.

Then: ryll's pcaps are kept, parse, open in tshark and hold no secret;
a secret planted in a real pcap is masked and the pcap still opens; and
Debian's chromium, driven headless by its chromedriver through selenium,
opens both reports and the job index: every image loads
(naturalWidth > 0), the timeline draws, and each failed check of the
failed run is inside the first viewport.
"""

import os
import shutil
import subprocess

import pytest

from kerbside_tempest_plugin.scenario import evidence
from unit_tests.conftest import require_tools

pytestmark = pytest.mark.integration

VIEWPORT = (1280, 800)
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu',
                  '--disable-background-networking',
                  '--disable-component-update', '--disable-sync',
                  '--no-first-run', '--disable-dev-shm-usage')


@pytest.fixture(scope='module')
def runs(tmp_path_factory, sextant_image):
    """(lane secret values, passing RunResult, failing RunResult, root)."""
    require_tools('qemu-system-x86_64', 'ryll', 'mariadbd')
    from kerbside_tempest_plugin.lane import lane as lane_mod
    from kerbside_tempest_plugin.scenario import runner
    root = str(tmp_path_factory.mktemp('artifacts'))
    lane = lane_mod.Lane(str(tmp_path_factory.mktemp('lane')),
                         route='kerbside', kerbside=True)
    try:
        lane.up()
        passed = runner.run_scenario(lane, 'canonical', 'kerbside',
                                     str(sextant_image), root)
        failed = runner.run_scenario(lane, 'canonical', 'direct',
                                     str(sextant_image), root,
                                     step_timeout=2.5,
                                     name='deliberately-failed')
        # Every value the lane registered: SPICE ticket, DB password,
        # Kerbside JWT and seed, and each .vv password ryll was given.
        values = sorted(lane.redactor.values)
    finally:
        report = lane.down()
    assert not report['leftover_pids'], report
    assert passed.passed, passed.failure_message()
    assert not failed.passed
    return values, passed, failed, root


def test_ryll_capture_is_kept_and_parses(runs):
    require_tools('tshark')
    values, passed, _, _ = runs
    d = passed.artifact_dir
    summary = evidence._load_json(os.path.join(d, 'ryll', 'evidence.json'))
    assert summary['capture'] and summary['pedantic']
    names = {f['name'] for f in summary['files']}
    for ch in evidence.CHANNELS:
        assert 'ryll/capture-%s.pcap' % ch in names, names
    meta = next(f for f in summary['files']
                if f['name'] == 'ryll/capture-metadata.json')['metadata']
    assert meta['ryll_version'] == '0.3.0'
    assert meta['target_tls_port']   # the Kerbside route is TLS
    for ch in ('main', 'display', 'inputs'):
        path = os.path.join(d, 'ryll', 'capture-%s.pcap' % ch)
        s = evidence.summarize_pcap(path)
        assert s['packets'] > 0 and not s['link_stage_present'], (ch, s)
        out = subprocess.run(
            ['tshark', '-r', path, '-d', 'tcp.port==5900,spice'],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert len(out.stdout.splitlines()) == s['packets']
    assert any(f['name'].endswith('.pcap') for f in summary['files'])
    # No ticket, JWT or .vv password anywhere in either run's files,
    # binary or text, raw or compressed.
    for r in runs[1:3]:
        assert evidence.find_secrets(r.artifact_dir, values) == []


def test_a_secret_planted_in_a_real_pcap_is_masked(runs, tmp_path):
    require_tools('tshark')
    values, passed, _, _ = runs
    src = os.path.join(passed.artifact_dir, 'ryll', 'capture-display.pcap')
    data = bytearray(open(src, 'rb').read())
    _, packets = evidence.read_pcap(bytes(data))
    secret = max(values, key=len).encode()
    big = max(packets, key=lambda p: len(p.data))
    at = bytes(data).find(big.data) + len(big.data) - len(secret) - 1
    data[at:at + len(secret)] = secret
    planted = tmp_path / 'display.pcap'
    planted.write_bytes(bytes(data))
    assert evidence.find_secrets(str(tmp_path), values)

    class Known:
        pass
    known = Known()
    known.values = frozenset(values)
    assert evidence.scrub_file(str(planted), known) == 'masked'
    assert evidence.find_secrets(str(tmp_path), values) == []
    assert len(evidence.read_pcap(planted.read_bytes())[1]) == len(packets)
    out = subprocess.run(['tshark', '-r', str(planted)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    require_tools('chromium', 'chromedriver')
    from selenium import webdriver
    from selenium.webdriver.chrome import service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which('chromium')
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument('--user-data-dir=%s'
                      % tmp_path_factory.mktemp('chromium-profile'))
    opts.add_argument('--window-size=%d,%d' % VIEWPORT)
    driver = webdriver.Chrome(
        service=service.Service(shutil.which('chromedriver')),
        options=opts)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def _open(driver, path):
    driver.get('file://' + path)
    # Every image decoded (or failed) before we judge them.
    driver.execute_async_script(
        'var done = arguments[arguments.length - 1];'
        'var imgs = Array.from(document.images);'
        'Promise.all(imgs.map(i => i.complete ? 1 : new Promise('
        'r => { i.onload = i.onerror = r; }))).then(() => done(1));')


def _broken_images(driver):
    return driver.execute_script(
        'return Array.from(document.images).filter('
        'i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);')


def _in_viewport(driver, element):
    return driver.execute_script(
        'var r = arguments[0].getBoundingClientRect();'
        'return [r.top, r.bottom, r.left, r.right, window.innerHeight,'
        ' window.innerWidth];', element)


def _timeline(driver):
    return driver.execute_script(
        'var s = document.getElementById("timeline");'
        'if (!s) return null; var r = s.getBoundingClientRect();'
        'return {w: r.width, h: r.height,'
        ' marks: s.querySelectorAll(".mark").length,'
        ' spans: s.querySelectorAll(".beat-span").length};')


def test_passing_report_in_a_browser(runs, browser):
    _, passed, _, _ = runs
    _open(browser, os.path.join(passed.artifact_dir, 'report.html'))
    verdict = browser.find_element('id', 'verdict')
    assert verdict.text.startswith('Verdict: PASS')
    assert _in_viewport(browser, verdict)[0] < 60
    n_images = browser.execute_script('return document.images.length')
    assert n_images >= 7       # six beat screenshots and the frame player
    assert _broken_images(browser) == []
    t = _timeline(browser)
    assert t and t['w'] > 500 and t['h'] > 80, t
    assert t['marks'] > 50 and t['spans'] >= 6, t
    assert browser.find_elements('id', 'failures') == []
    # The frame player steps through the captured frames.
    label = browser.find_element('id', 'frame-label')
    first = label.text
    browser.find_element('id', 'play').click()
    import time
    deadline = time.monotonic() + 10
    while label.text == first and time.monotonic() < deadline:
        time.sleep(0.1)
    assert label.text != first, 'the frame player did not advance'
    assert _broken_images(browser) == []
    links = [a.get_attribute('href') for a in
             browser.find_elements('css selector', '#ryll-evidence a')]
    assert any(h.endswith('capture-display.pcap') for h in links), links


def test_failed_report_shows_the_failure_without_scrolling(runs, browser):
    _, _, failed, _ = runs
    _open(browser, os.path.join(failed.artifact_dir, 'report.html'))
    assert browser.find_element('id', 'verdict').text.startswith(
        'Verdict: FAIL')
    assert _broken_images(browser) == []
    bad = [r.name for r in failed.results if not r.passed]
    assert 'beats' in bad
    shown = browser.find_elements('css selector', '#failures .failed-check')
    ids = [e.get_attribute('id') for e in shown]
    for name in bad:
        assert 'failed-%s' % name in ids, (name, ids)
    for e in shown:
        top, bottom, left, right, height, width = _in_viewport(browser, e)
        assert 0 <= top and bottom <= height and right <= width, (
            e.get_attribute('id'), top, bottom, height)
    beat = browser.find_element('css selector', '.failed-beat')
    assert 'bootloader-prompt' in beat.text
    last = browser.find_elements('css selector', '#last-frames img')
    assert len(last) >= 2
    t = _timeline(browser)
    assert t and t['w'] > 500 and t['marks'] > 5, t


def test_index_links_every_report(runs, browser):
    _, passed, failed, root = runs
    _open(browser, os.path.join(root, 'index.html'))
    assert '1 of 2 passed' in browser.find_element('id', 'verdict').text
    hrefs = [a.get_attribute('href') for a in
             browser.find_elements('css selector', '#runs a')]
    want = {'file://' + os.path.join(r.artifact_dir, 'report.html')
            for r in (passed, failed)}
    assert set(hrefs) == want
