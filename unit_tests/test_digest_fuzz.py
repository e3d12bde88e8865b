"""The oracle fuzzer: a quick run by default, the full run marked slow."""

import importlib.util

import pytest

from unit_tests.conftest import REPO_ROOT


def load_fuzzer():
    path = REPO_ROOT / 'benchmarks' / 'fuzz_oracles.py'
    spec = importlib.util.spec_from_file_location('fuzz_oracles', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_fuzz_only_typed_errors(capsys):
    fuzz = load_fuzzer()
    status = fuzz.main(['--payload', '3000', '--serial', '1500',
                        '--image', '24', '--seed', '7'])
    out = capsys.readouterr().out
    assert 'findings (untyped errors or slow cases): 0' in out, out
    assert status == 0


def test_fuzzer_reports_untyped_errors():
    # The harness must be able to fail: an untyped exception is a finding.
    fuzz = load_fuzzer()
    report = fuzz.Report(max_case_s=5)
    report.run('x', b'', lambda: {}['missing'], ValueError)
    report.run('x', b'', lambda: int('x'), ValueError)
    assert len(report.findings) == 1
    assert report.counts['x']['typed_errors'] == 1


@pytest.mark.slow
def test_full_fuzz_run(capsys):
    fuzz = load_fuzzer()
    status = fuzz.main(['--payload', '100000', '--serial', '50000',
                        '--image', '600'])
    out = capsys.readouterr().out
    assert status == 0, out
    assert 'total 150600 cases' in out
