"""providers.refresh_display: the private Xorg whose monitor rate sets
qemu's display refresh. The modeline arithmetic, typed errors for bad
input and missing parts, and (where Xorg and the dummy driver are
installed) a real server started, answered and stopped.
"""

import os
import re
import shutil
import stat
import subprocess

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.providers import refresh_display as rd


@pytest.mark.parametrize('hz', [34, 60, 250, 1000])
def test_the_modeline_refreshes_at_the_rate_asked(hz):
    line, name = rd.modeline(hz)
    m = re.match(r'Modeline "(\S+)" ([\d.]+) 640 \d+ \d+ (\d+) 480 \d+ \d+ '
                 r'(\d+)$', line)
    assert m and m.group(1) == name
    clock_hz = float(m.group(2)) * 1e6
    rate = clock_hz / (int(m.group(3)) * int(m.group(4)))
    assert rate == pytest.approx(hz, rel=1e-4)
    # what QEMU's GTK listener makes of it: min(1000 / rate, 30) ms
    assert min(1000.0 / rate, 30) < 30


@pytest.mark.parametrize('hz', [0, 30, 33, 1001, 'fast'])
def test_a_rate_qemu_would_not_use_is_a_typed_error(hz):
    with pytest.raises(rd.RefreshDisplayError):
        rd.modeline(hz)


def test_a_rate_at_or_below_the_default_names_why():
    with pytest.raises(rd.RefreshDisplayError, match='30 ms default'):
        rd.modeline(30)
    assert issubclass(rd.RefreshDisplayError, errors.ProviderError)


def test_the_config_uses_the_dummy_driver_and_its_one_mode():
    conf = rd.xorg_conf(250)
    assert 'Driver "dummy"' in conf
    assert 'Modes "640x480_250"' in conf
    assert conf.count('Modeline') == 1


def fake_qemu(tmp_path, listing):
    path = tmp_path / 'qemu'
    path.write_text('#!/bin/sh\nprintf "%s\\n"\n' % listing)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_missing_names_a_qemu_without_gtk(tmp_path, monkeypatch):
    monkeypatch.setattr(rd, 'find_xorg', lambda: '/usr/bin/true')
    monkeypatch.setattr(rd, 'DUMMY_DRIVER', str(tmp_path / 'nope.so'))
    out = rd.missing(fake_qemu(tmp_path, 'none\negl-headless\ncurses'))
    assert any('nope.so' in m for m in out)
    assert any('qemu-system-gui' in m for m in out)
    monkeypatch.setattr(rd, 'DUMMY_DRIVER', str(tmp_path / 'qemu'))
    assert rd.missing(fake_qemu(tmp_path, 'none\ngtk')) == []


def test_missing_reports_a_qemu_that_cannot_run(tmp_path):
    out = rd.missing(str(tmp_path / 'no-such-qemu'))
    assert any('-display help failed' in m for m in out)


def test_start_without_xorg_is_a_typed_error(tmp_path, monkeypatch):
    monkeypatch.setattr(rd, 'find_xorg', lambda: None)
    with pytest.raises(rd.RefreshDisplayError, match='xserver-xorg-core'):
        rd.RefreshDisplay(str(tmp_path)).start()


def test_an_xorg_that_dies_is_reported_with_its_log(tmp_path, monkeypatch):
    script = tmp_path / 'Xorg'
    script.write_text('#!/bin/sh\necho "Fatal server error: planted" >&2\n'
                      'exit 3\n')
    script.chmod(0o755)
    monkeypatch.setattr(rd, 'find_xorg', lambda: str(script))
    monkeypatch.setattr(rd, 'DISPLAY_TRIES', 2)
    d = rd.RefreshDisplay(str(tmp_path))
    with pytest.raises(errors.HarnessError) as ei:
        d.start(timeout=5)
    assert 'planted' in str(ei.value) or 'exited 3' in str(ei.value)
    assert d.proc is None or d.proc.poll() is not None


@pytest.mark.skipif(rd.find_xorg() is None or
                    not os.path.exists(rd.DUMMY_DRIVER),
                    reason='needs xserver-xorg-core and '
                           'xserver-xorg-video-dummy')
def test_a_real_server_starts_answers_and_stops(tmp_path):
    d = rd.RefreshDisplay(str(tmp_path), hz=250).start(timeout=30)
    try:
        assert d.proc.poll() is None
        assert rd._accepts(d.display)
        assert d.env({})['DISPLAY'] == ':%d' % d.display
        assert rd.RefreshDisplay.qemu_args() == ['-display', 'gtk']
        if shutil.which('xrandr'):
            out = subprocess.run(['xrandr'], env=d.env(), timeout=20,
                                 capture_output=True, text=True).stdout
            assert re.search(r'640x480_250\s+250\.00\*', out), out
    finally:
        proc = d.proc
        d.stop()
    assert proc.poll() is not None
    d.stop()                                  # idempotent


def test_the_environment_setting_is_checked():
    assert rd.hz_from_env({}) == 0
    assert rd.hz_from_env({rd.ENV_VAR: ' '}) == 0
    assert rd.hz_from_env({rd.ENV_VAR: '250'}) == 250
    with pytest.raises(rd.RefreshDisplayError, match='not a number'):
        rd.hz_from_env({rd.ENV_VAR: 'fast'})
