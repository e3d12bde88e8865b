"""RyllProcess against a stand-in 'ryll' executable built on ryll.fake."""

import json
import os
import signal
import stat
import time

import pytest

from kerbside_tempest_plugin.ryll import client as rc
from kerbside_tempest_plugin.ryll import process as rp


def _proc(tmp_path, fake_binary, **kw):
    binary, _ = fake_binary
    kw.setdefault('direct', '127.0.0.1:1')
    return rp.RyllProcess(workdir=str(tmp_path / 'work'), binary=binary,
                          **kw)


def test_start_connect_stop(tmp_path, fake_binary):
    p = _proc(tmp_path, fake_binary)
    with p:
        client = p.connect(timeout=10)
        try:
            assert client.protocol_version == '1.5'
            status = p.wait_ready(client, timeout=5, settle=0)
            assert status['surfaces']
        finally:
            client.close()
        sock_dir = os.path.dirname(p.socket_path)
        assert len(os.fsencode(p.socket_path)) < rp.MAX_SOCKET_PATH
    assert p.returncode == 0
    assert not os.path.exists(sock_dir)
    record = json.loads(fake_binary[1].read_text())
    assert record['dir_mode'] == 0o700
    assert record['argv'][:3] == ['--headless', '--control-socket',
                                  p.socket_path]
    assert '--enable-paste-as-keystrokes' in record['argv']
    assert record['argv'][-2:] == ['--direct', '127.0.0.1:1']
    assert 'fake ryll starting' in p.log_tail()
    assert '\x1b[' not in p.log_tail()


def test_vv_written_private_and_removed(tmp_path, fake_binary):
    vv = '[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport=1\npassword=s3cr3t\n'
    p = _proc(tmp_path, fake_binary, direct=None, vv_text=vv)
    with p:
        p.wait_for_socket(10)
        written = p._written_vv
    record = json.loads(fake_binary[1].read_text())
    assert record['vv_mode'] == 0o600
    assert record['vv_text'] == vv
    assert not os.path.exists(written)
    for root, _, files in os.walk(p.workdir):
        for name in files:
            assert b's3cr3t' not in open(os.path.join(root, name),
                                         'rb').read()


def test_long_workdir_keeps_socket_path_short(tmp_path, fake_binary):
    deep = tmp_path / ('d' * 60) / ('e' * 60)
    p = rp.RyllProcess(workdir=str(deep), binary=fake_binary[0],
                       direct='127.0.0.1:1')
    with p:
        p.wait_for_socket(10)
        assert len(os.fsencode(p.socket_path)) < rp.MAX_SOCKET_PATH
        assert stat.S_IMODE(os.stat(p.private_dir).st_mode) == 0o700
    assert os.path.exists(p.stdout_path)


def test_exit_before_socket_reports_status_and_log(tmp_path, fake_binary,
                                                   monkeypatch):
    monkeypatch.setenv('FAKE_RYLL_MODE', 'exit1')
    p = _proc(tmp_path, fake_binary)
    with p:
        with pytest.raises(rp.RyllProcessError) as e:
            p.wait_for_socket(10)
    msg = str(e.value)
    assert 'exited with status 1' in msg
    assert 'Connection refused' in msg


def test_socket_never_appears(tmp_path, fake_binary, monkeypatch):
    monkeypatch.setenv('FAKE_RYLL_MODE', 'nosocket')
    p = _proc(tmp_path, fake_binary)
    with p:
        with pytest.raises(rc.RyllTimeout) as e:
            p.wait_for_socket(0.5)
        assert 'running' in str(e.value)
        assert 'fake ryll starting' in str(e.value)
    assert p.returncode is not None


def test_sigint_ignored_falls_back_to_sigkill(tmp_path, fake_binary,
                                              monkeypatch):
    monkeypatch.setenv('FAKE_RYLL_MODE', 'ignore_int')
    p = _proc(tmp_path, fake_binary)
    p.start()
    p.wait_for_socket(10)
    start = time.monotonic()
    rc_ = p.stop(timeout=0.5, kill_timeout=5)
    assert rc_ == -signal.SIGKILL
    assert time.monotonic() - start < 5
    assert not os.path.exists(p.socket_path)   # stale socket removed
    assert p.stop() == rc_                     # idempotent


def test_wait_ready_times_out_with_status(tmp_path, fake_binary):
    p = _proc(tmp_path, fake_binary)
    with p:
        client = p.connect(timeout=10)
        with client:
            client.status()
            # The fake serves one status object; make it surface-less.
            with pytest.raises(rc.RyllTimeout, match='no SPICE surface'):
                orig = client.status
                client.status = lambda timeout=None: dict(
                    orig(timeout), surfaces=[])
                p.wait_ready(client, timeout=0.3)


def test_wait_ready_waits_for_the_inputs_log_line(tmp_path, fake_binary,
                                                  monkeypatch):
    # The stand-in logs ryll's inputs line only in this mode, after 0.3 s.
    monkeypatch.setenv('FAKE_RYLL_INPUTS_AFTER', '0.3')
    p = _proc(tmp_path, fake_binary)
    with p:
        client = p.connect(timeout=10)
        with client:
            start = time.monotonic()
            p.wait_ready(client, timeout=5, settle=3, inputs_timeout=5)
            waited = time.monotonic() - start
    # Returned on the log line, not after the 3 s fallback settle.
    assert 0.2 < waited < 2.5, waited


def test_wait_ready_falls_back_to_settle_without_the_log_line(
        tmp_path, fake_binary, caplog):
    p = _proc(tmp_path, fake_binary)
    with p:
        client = p.connect(timeout=10)
        with client:
            start = time.monotonic()
            p.wait_ready(client, timeout=5, settle=0.4, inputs_timeout=0.3)
            waited = time.monotonic() - start
    assert waited >= 0.7, waited
    assert rp.INPUTS_READY_LOG in caplog.text
    assert p.wait_for_log('fake ryll starting', 1)
    assert not p.wait_for_log('never logged', 1)   # ryll has exited


def test_find_ryll(tmp_path, fake_binary):
    assert rp.find_ryll(fake_binary[0]) == fake_binary[0]
    with pytest.raises(rp.RyllProcessError):
        rp.find_ryll(str(tmp_path / 'nope'))
    with pytest.raises(rp.RyllProcessError):
        rp.find_ryll('no-such-ryll-binary')


def test_exactly_one_target(tmp_path):
    with pytest.raises(ValueError):
        rp.RyllProcess(workdir=str(tmp_path))
    with pytest.raises(ValueError):
        rp.RyllProcess(vv_path='x', direct='h:1', workdir=str(tmp_path))
