"""common.atomic and the teardown's scrub: two writers of one file at
once (a lane's own teardown and a detached `kerbside-harness down`,
seen in CI: lane.json with another write's tail after it) leave one
whole file.
"""

import json
import os
import stat

from kerbside_tempest_plugin.common import atomic
from kerbside_tempest_plugin.common import secrets
from unit_tests import conftest


def test_writers_at_once_leave_one_whole_file(tmp_path):
    path = str(tmp_path / 'lane.json')

    def write(n):
        for i in range(200):
            atomic.write_json(path, {'writer': n, 'pad': 'x' * (
                (n * 997 + i * 31) % 3000)})
            with open(path) as f:
                json.load(f)
    assert conftest.raised_in_threads(write, 4) == []
    assert json.load(open(path))['writer'] in range(4)
    assert [p for p in os.listdir(tmp_path) if p.endswith('.tmp')] == []
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_a_mode_is_kept_and_a_failed_write_leaves_no_tmp(tmp_path):
    path = str(tmp_path / 'secret')
    atomic.write_text(path, 'x', mode=0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    try:
        atomic.write_json(path, {'bad': object()})
    except TypeError:
        pass
    assert open(path).read() == 'x'
    assert os.listdir(tmp_path) == ['secret']


def test_the_scrub_rewrites_atomically_and_keeps_the_mode(tmp_path):
    log = tmp_path / 'logs' / 'x.log'
    log.parent.mkdir()
    log.write_text('ticket s3cr3t-t1cket-value here\n')
    os.chmod(log, 0o640)
    red = secrets.Redactor()
    red.add('s3cr3t-t1cket-value')
    assert secrets.scrub_tree(str(tmp_path), red) == [str(log)]
    assert 's3cr3t' not in log.read_text()
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o640
    assert os.listdir(log.parent) == ['x.log']
