"""sextant-digest console script."""

import io
import json
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from kerbside_tempest_plugin.cmd import digest as cli
from kerbside_tempest_plugin.digest import render
from unit_tests import digest_fixtures as fx


def save_png(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def test_decode_images(capsys, tmp_path):
    good = save_png(tmp_path / 'good.png', render.render_guest_frame(
        3, fx.MIXED_HASHES, fx.MIXED_EVENTS))
    status, objs, err = run(capsys, 'decode', good)
    assert status == 0 and err == ''
    [o] = objs
    assert o['image'] == good and o['found'] is True
    assert o['origin'] == [828, 556] and o['size'] == [180, 180]
    assert o['frame_counter'] == 3 and o['schema_version'] == 2
    assert o['hashes'] == fx.MIXED_HASHES
    assert [e['kind'] for e in o['events']] == [
        'bootloader_timeout', 'mode_switch', 'mode_cycle']
    assert o['events'][1] == {'kind': 'mode_switch',
                              'timestamp_ms': 0x10000007,
                              'requested': [1024, 768],
                              'applied': [800, 600]}
    assert isinstance(o['framebuffer_hash'], int)
    assert o['framebuffer_hash_ok'] is True


def test_decode_mixed_good_and_bad(capsys, tmp_path):
    good = save_png(tmp_path / 'good.png', render.render_frame(
        fx.GOLDEN_EMPTY, 640, 480))
    blank = save_png(tmp_path / 'blank.png', np.zeros((48, 64, 3),
                                                      np.uint8))
    junk = tmp_path / 'junk.png'
    junk.write_bytes(b'\x89PNG garbage')
    status, objs, err = run(capsys, 'decode', good, blank, str(junk),
                            str(tmp_path / 'missing.png'))
    assert status == 1
    assert [o['found'] for o in objs] == [True, False, False, False]
    assert objs[0]['framebuffer_hash_ok'] is False   # fb=0 in the golden
    assert objs[1]['error_type'] == 'QrNotFound'
    assert objs[2]['error_type'] == 'ImageError'
    assert objs[3]['error_type'] == 'ImageError'
    assert len(err.splitlines()) == 3
    assert all(line.startswith('sextant-digest: ')
               for line in err.splitlines())
    assert 'Traceback' not in err


def test_payload_hex(capsys):
    status, [o], err = run(capsys, 'payload', fx.GOLDEN_SINGLE_KEYPRESS.hex())
    assert status == 0
    assert 'image' not in o and 'origin' not in o
    assert o['frame_counter'] == 0x12345678
    assert o['events'] == [{'kind': 'keypress',
                            'timestamp_ms': 0x0102030405060708,
                            'unicode': 65, 'scancode': 0x1234}]
    assert o['framebuffer_hash'] == 0xCAFEBABE


@pytest.mark.parametrize('arg,etype', [
    ('zz', 'DigestError'), ('abc', 'DigestError'),
    (fx.GOLDEN_EMPTY[:-1].hex(), 'PayloadTooShort'),
    ((b'SXDX' + fx.GOLDEN_EMPTY[4:]).hex(), 'BadMagic'),
])
def test_payload_bad(capsys, arg, etype):
    status, [o], err = run(capsys, 'payload', arg)
    assert status == 1
    assert o['found'] is False and o['error_type'] == etype
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize('argv', [[], ['decode'], ['frobnicate', 'x'],
                                  ['payload']])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2


def test_runs_as_module_with_stdin(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(render.render_frame(fx.GOLDEN_MIXED)).save(buf, 'PNG')
    proc = subprocess.run(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.digest',
         'decode', '-'], input=buf.getvalue(), capture_output=True,
        timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)['frame_counter'] == 0xDEADBEEF
    proc = subprocess.run(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.digest',
         'decode', '-'], input=b'nonsense', capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert b'Traceback' not in proc.stderr
