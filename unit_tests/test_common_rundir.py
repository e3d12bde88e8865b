"""Run directories carry the suite's tag, so a suite judges only its own."""

import os

from kerbside_tempest_plugin.common import rundir


def test_tagged_run_dirs_are_told_apart(monkeypatch):
    monkeypatch.setenv('KTP_RUN_TAG', 'suite1')
    mine = rundir.make()
    try:
        assert os.path.basename(mine).startswith('ktp-run-suite1-')
        assert oct(os.stat(mine).st_mode & 0o777) == '0o700'
        assert rundir.is_run_dir(mine)
        monkeypatch.setenv('KTP_RUN_TAG', 'other')
        assert not os.path.basename(mine).startswith(rundir.prefix())
        assert rundir.prefix('') == 'ktp-run-'
    finally:
        os.rmdir(mine)


def test_a_tag_is_letters_and_digits_only(monkeypatch):
    monkeypatch.setenv('KTP_RUN_TAG', '../x y!9')
    assert rundir.prefix() == 'ktp-run-xy9-'
    monkeypatch.delenv('KTP_RUN_TAG')
    assert rundir.prefix() == 'ktp-run-'
    assert not rundir.is_run_dir('/tmp/other')
