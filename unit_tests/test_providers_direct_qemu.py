"""Unit tests for the direct-qemu provider's pure parts (no qemu run)."""

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.providers import direct_qemu


def _argv(**kw):
    args = dict(qemu_binary='qemu-system-x86_64', name='g1', accel='tcg',
                memory_mb=256, ovmf_code='/fw/CODE_4M.fd',
                vars_copy='/a/VARS.fd', serial_path='/a/serial.log',
                ticket_file='/s/spice-ticket', spice_port=41000,
                qmp_path='/r/qmp.sock', overlay='/a/overlay.qcow2')
    args.update(kw)
    return direct_qemu.build_argv(**args)


def _opt(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_argv_machine_firmware_and_disk():
    argv = _argv()
    assert _opt(argv, '-machine') == ['q35']
    assert _opt(argv, '-accel') == ['tcg']
    drives = _opt(argv, '-drive')
    assert drives[0] == ('if=pflash,format=raw,readonly=on,'
                         'file=/fw/CODE_4M.fd')
    assert drives[1] == 'if=pflash,format=raw,file=/a/VARS.fd'
    # The disk has no if=, so q35 puts it on its AHCI controller.
    assert drives[2] == 'format=qcow2,file=/a/overlay.qcow2'
    assert 'if=' not in drives[2] and 'virtio' not in ' '.join(argv)
    for flag, value in (('-vga', 'qxl'), ('-display', 'none'),
                        ('-nic', 'none'), ('-serial', 'file:/a/serial.log')):
        assert _opt(argv, flag) == [value]
    assert '-no-reboot' in argv and '-nodefaults' not in argv


def test_argv_ps2_trace_one_trace_option_per_event():
    # a second enable= in one -trace replaces the first (qemu 7.2 traced
    # only the last event so): one -trace each, to a file, timed
    argv = _argv(trace_path='/a/ps2-trace.log')
    assert _opt(argv, '-trace') == [
        'enable=%s' % e for e in direct_qemu.PS2_TRACE_EVENTS]
    assert 'ps2_put_keycode' in direct_qemu.PS2_TRACE_EVENTS
    assert _opt(argv, '-D') == ['/a/ps2-trace.log']
    assert _opt(argv, '-msg') == ['timestamp=on']
    plain = _argv()
    assert '-trace' not in plain and '-D' not in plain


def test_argv_diskless_has_only_the_firmware():
    assert len(_opt(_argv(overlay=None), '-drive')) == 2


def test_argv_spice_ticket_comes_from_a_file_not_the_command_line():
    argv = _argv()
    assert _opt(argv, '-object') == [
        'secret,id=spice-ticket,format=raw,file=/s/spice-ticket']
    spice = _opt(argv, '-spice')[0]
    assert spice == ('port=41000,addr=127.0.0.1,image-compression=off,'
                     'streaming-video=off,password-secret=spice-ticket')
    assert 'data=' not in ' '.join(argv) and 'password=' not in spice


def test_argv_tls_port_and_qmp():
    argv = _argv(tls_port=41001, x509_dir='/s/x509',
                 extra_args=['-S'])
    assert _opt(argv, '-spice')[0].endswith(
        ',tls-port=41001,x509-dir=/s/x509')
    assert _opt(argv, '-qmp') == ['unix:/r/qmp.sock,server=on,wait=off']
    assert argv[-1] == '-S'


def test_find_ovmf_explicit_missing(tmp_path):
    with pytest.raises(errors.ProviderError) as e:
        direct_qemu.find_ovmf(str(tmp_path / 'code.fd'),
                              str(tmp_path / 'vars.fd'))
    assert 'code.fd' in str(e.value)


def test_find_ovmf_explicit(tmp_path):
    code, vars_ = tmp_path / 'c.fd', tmp_path / 'v.fd'
    code.write_bytes(b'x')
    vars_.write_bytes(b'y')
    found = direct_qemu.find_ovmf(str(code), str(vars_))
    assert found == (str(code), str(vars_))


def test_find_ovmf_prefers_4m(monkeypatch):
    present = {'/usr/share/OVMF/OVMF_CODE.fd', '/usr/share/OVMF/OVMF_VARS.fd',
               '/usr/share/OVMF/OVMF_CODE_4M.fd',
               '/usr/share/OVMF/OVMF_VARS_4M.fd'}
    monkeypatch.setattr(direct_qemu.os.path, 'exists',
                        lambda p: p in present)
    assert direct_qemu.find_ovmf()[0].endswith('OVMF_CODE_4M.fd')


def test_find_ovmf_none(monkeypatch):
    monkeypatch.setattr(direct_qemu.os.path, 'exists', lambda p: False)
    with pytest.raises(errors.ProviderError) as e:
        direct_qemu.find_ovmf()
    assert 'ovmf' in str(e.value).lower()


def test_choose_accel_forced_needs_no_probe(monkeypatch):
    monkeypatch.setattr(direct_qemu, 'probe_kvm',
                        lambda *a, **k: pytest.fail('probed'))
    assert direct_qemu.choose_accel('tcg')[0] == 'tcg'
    assert direct_qemu.choose_accel('kvm')[0] == 'kvm'


def test_choose_accel_auto_probes_once_and_says_why(monkeypatch, tmp_path):
    code, vars_ = tmp_path / 'c.fd', tmp_path / 'v.fd'
    code.write_bytes(b'x')
    vars_.write_bytes(b'y')
    calls = []

    def probe(binary, c, v):
        calls.append(binary)
        return False, 'OVMF crashed under KVM after 0.1 s (emulation failure)'

    monkeypatch.setattr(direct_qemu, 'probe_kvm', probe)
    monkeypatch.setattr(direct_qemu, '_ACCEL_CACHE', {})
    for _ in range(3):
        accel, why = direct_qemu.choose_accel(
            'auto', 'fake-qemu', str(code), str(vars_))
    assert accel == 'tcg' and 'emulation failure' in why
    assert calls == ['fake-qemu']


def test_probe_kvm_without_dev_kvm(monkeypatch):
    monkeypatch.setattr(direct_qemu.os.path, 'exists',
                        lambda p: p != '/dev/kvm')
    ok, why = direct_qemu.probe_kvm('qemu', 'c', 'v')
    assert not ok and '/dev/kvm' in why


def test_direct_route_vv_holds_the_ticket_but_argv_does_not(tmp_path):
    from kerbside_tempest_plugin.common import vv
    provider = direct_qemu.DirectQemuProvider.__new__(
        direct_qemu.DirectQemuProvider)
    provider.route = 'direct'
    provider.route_factory = None
    guest = direct_qemu.DirectQemuGuest(provider, 'g', str(tmp_path), 41000,
                                        'secret-ticket-1234', '/s/t')
    fields = vv.parse_vv(guest.console_vv())
    assert fields == {'type': 'spice', 'host': '127.0.0.1', 'port': '41000',
                      'password': 'secret-ticket-1234',
                      'title': 'g (direct)'}
    assert guest.console_route().to_json() == {
        'kind': 'direct', 'host': '127.0.0.1', 'port': 41000}
    with pytest.raises(errors.ProviderError):
        guest.console_vv('kerbside')
    assert not guest.is_running()
    guest.teardown()
    guest.teardown()


def test_argv_without_spice_or_without_a_ticket():
    # The integration tests' guests use the same command line.
    bare = _argv(spice_port=None, ticket_file=None)
    assert '-spice' not in bare and '-object' not in bare
    assert _opt(bare, '-qmp') == ['unix:/r/qmp.sock,server=on,wait=off']
    open_ = _argv(ticket_file=None)
    assert _opt(open_, '-spice') == [
        'port=41000,addr=127.0.0.1,image-compression=off,'
        'streaming-video=off,disable-ticketing=on']
    assert '-object' not in open_


def test_qnum_is_qemus_key_number_for_a_set1_make_code():
    # QEMU numbers keys as XT set 1 with an extended 0xE0xx key at
    # 0x80 | xx (its qcode_to_number table: ctrl_r 0x9d, meta_l 0xdb).
    assert direct_qemu.qnum(0x1C) == 0x1C
    assert direct_qemu.qnum(0x2A) == 0x2A
    assert direct_qemu.qnum(0xE01D) == 0x9D
    assert direct_qemu.qnum(0xE05B) == 0xDB
    for bad in (0, 0x80, 0x9C, 0xE080, -1, True, 'a', None):
        with pytest.raises(errors.ProviderError):
            direct_qemu.qnum(bad)


def test_a_guest_without_spice_has_no_console(tmp_path):
    provider = direct_qemu.DirectQemuProvider.__new__(
        direct_qemu.DirectQemuProvider)
    guest = direct_qemu.DirectQemuGuest(provider, 'g', str(tmp_path), None,
                                        None, None)
    for call in (guest.console_vv, guest.console_route):
        with pytest.raises(errors.ProviderError) as e:
            call()
        assert 'no SPICE server' in str(e.value)


@pytest.mark.parametrize('rc,note', [
    (None, ''), (0, '; qemu had exited with status 0'),
    (-11, '; qemu had died of SIGSEGV (qemu crashed)'),
    (-15, '; qemu had died of SIGTERM')])
def test_exit_note_names_a_crash(rc, note):
    import types
    guest = types.SimpleNamespace(returncode=rc)
    assert direct_qemu.DirectQemuGuest.exit_note(guest) == note
