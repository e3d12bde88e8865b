"""The provider's display_refresh_hz on a real qemu: the private Xorg
comes up, qemu runs its GTK display on it beside SPICE, and QEMU's own
trace shows its display refresh timer (ui/console.c gui_update, the one
that also feeds spice) at the monitor's period instead of 30 ms. The
server is gone after the provider closes.
"""

import re
import time

import pytest

from kerbside_tempest_plugin.providers import refresh_display as rd

pytestmark = pytest.mark.integration


@pytest.mark.parametrize('hz,interval_ms', [(250, 4), (100, 10)])
def test_qemu_refreshes_its_display_at_the_monitor_rate(
        qemu_guest, hz, interval_ms):
    missing = rd.missing()
    if missing:
        pytest.skip('; '.join(missing))
    g = qemu_guest(None, name='refresh-%d' % hz, spice=True,
                   ticketing=False, display_refresh_hz=hz,
                   extra_args=['-trace', 'console_refresh'])
    argv = ' '.join(g.argv)
    assert '-display gtk' in argv
    xorg = g.provider._refresh
    assert xorg is not None and xorg.proc.poll() is None
    deadline = time.monotonic() + 60
    seen = ''
    while time.monotonic() < deadline:
        with open(g.q.log_path, errors='replace') as f:
            seen = f.read()
        if re.search(r'console_refresh interval %d ms' % interval_ms, seen):
            break
        time.sleep(0.5)
    else:
        pytest.fail('qemu never refreshed at %d ms in 60 s; qemu.log:\n%s'
                    % (interval_ms, seen[-2000:]))
    proc = xorg.proc
    g.kill()
    assert proc.poll() is not None
    assert g.provider._refresh is None


def test_without_the_setting_qemu_keeps_its_30_ms(qemu_guest,
                                                  monkeypatch):
    monkeypatch.delenv(rd.ENV_VAR, raising=False)
    # qemu's -D file (the PS/2 trace's) would take this trace too
    monkeypatch.setenv('KTP_PS2_TRACE', '0')
    g = qemu_guest(None, name='refresh-off', spice=True, ticketing=False,
                   extra_args=['-trace', 'console_refresh'])
    assert '-display none' in ' '.join(g.argv)
    assert '-display gtk' not in ' '.join(g.argv)
    assert g.provider._refresh is None
    deadline = time.monotonic() + 60
    seen = ''
    while time.monotonic() < deadline:
        with open(g.q.log_path, errors='replace') as f:
            seen = f.read()
        if 'console_refresh interval' in seen:
            break
        time.sleep(0.5)
    assert re.findall(r'console_refresh interval (\d+) ms', seen) == ['30'], \
        seen[-2000:]
