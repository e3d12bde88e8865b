"""tools/job-lib.sh, the shell functions the job scripts share: sourced
in bash with the scripts' own log/die, as the jobs source it.
"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRELUDE = ('log() { echo "LOG $*"; }; die() { echo "DIE $*"; exit 2; }; '
           '. %s/tools/job-lib.sh; ' % REPO)


def bash(script, **env):
    return subprocess.run(['bash', '-c', PRELUDE + script],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **env))


def test_routes_are_checked():
    ok = bash('ktp_check_routes kerbside direct && echo fine')
    assert ok.returncode == 0 and 'fine' in ok.stdout
    bad = bash('ktp_check_routes kerbside sideways; echo not reached')
    assert bad.returncode == 2
    assert "not 'sideways'" in bad.stdout
    assert 'not reached' not in bad.stdout


def test_find_python_takes_python_and_checks_it_imports(tmp_path):
    r = bash('ktp_find_python /nonexistent && echo "PY=$PY"',
             PYTHON=sys.executable)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'PY=%s' % sys.executable in r.stdout
    # A relative PYTHON is made absolute (the runners cd elsewhere).
    rel = os.path.relpath(sys.executable, str(tmp_path))
    r = subprocess.run(['bash', '-c', PRELUDE + 'cd %s && ktp_find_python '
                        '/nonexistent && echo "PY=$PY" && '
                        'sh -c \'echo "PYTHON=$PYTHON"\'' % tmp_path],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHON=rel))
    assert r.returncode == 0, r.stdout + r.stderr
    got = [ln[3:] for ln in r.stdout.splitlines() if ln.startswith('PY=')]
    assert got and os.path.isabs(got[0]), r.stdout
    assert os.path.samefile(got[0], sys.executable)
    # ... also for the children: stestr runs ${PYTHON:-python}.
    assert 'PYTHON=%s\n' % got[0] in r.stdout, r.stdout
    # A python without tempest and the plugin is refused, by name.
    r = bash('ktp_find_python /nonexistent', PYTHON='/usr/bin/python3',
             VIRTUAL_ENV='')
    if r.returncode == 0:
        pytest.skip('the system python imports tempest and the plugin')
    assert r.returncode == 2
    assert '/usr/bin/python3 cannot import tempest' in r.stdout


def test_verdicts_fail_on_a_failed_route_even_when_the_summary_passes(
        tmp_path):
    # An artifact tree with no tests and 0 expected: the summary passes.
    r = bash('PY=%s; ktp_verdicts %s 0 0 sextant kerbside=0 direct=1; '
             'echo "rc=$?"' % (sys.executable, tmp_path))
    assert 'route direct: runner exit 1' in r.stdout
    assert 'rc=1' in r.stdout, r.stdout + r.stderr
    r = bash('PY=%s; ktp_verdicts %s 0 0 sextant kerbside=0; echo "rc=$?"'
             % (sys.executable, tmp_path))
    assert 'rc=0' in r.stdout, r.stdout + r.stderr


def test_verdicts_expect_per_route_or_one_for_a_narrowed_regex(tmp_path):
    # No test ran: 4 per route on two routes is 8 missing; a narrowed
    # regex expects 1.
    r = bash('PY=%s; ktp_verdicts %s 4 0 sextant kerbside=0 direct=0; '
             'echo "rc=$?"' % (sys.executable, tmp_path))
    assert 'expected at least 8' in r.stdout and 'rc=1' in r.stdout, \
        r.stdout + r.stderr
    r = bash('PY=%s; ktp_verdicts %s 4 0 canonical direct=0; echo "rc=$?"'
             % (sys.executable, tmp_path))
    assert 'expected at least 1' in r.stdout and 'rc=1' in r.stdout, \
        r.stdout + r.stderr


def test_verdicts_fail_when_an_artifact_still_holds_a_token(tmp_path):
    logs = tmp_path / 'cloud' / 'logs'
    logs.mkdir(parents=True)
    (logs / 'nova.log').write_text(
        '"GET /v2.1/os-console-auth-tokens/<redacted>" status: 200\n')
    r = bash('PY=%s; ktp_verdicts %s 0 0 sextant kerbside=0; echo "rc=$?"'
             % (sys.executable, tmp_path))
    assert 'rc=0' in r.stdout and 'no token-shaped secret' in r.stdout, \
        r.stdout + r.stderr
    (logs / 'kerbside.log').write_text(
        '"url": "http://127.0.0.1:1/nova-console.vv?token=247c9b3e-806c"\n')
    r = bash('PY=%s; ktp_verdicts %s 0 0 sextant kerbside=0; echo "rc=$?"'
             % (sys.executable, tmp_path))
    assert 'rc=1' in r.stdout, r.stdout + r.stderr
    assert '1 token-shaped secret(s) in %s' % (logs / 'kerbside.log') in \
        r.stdout
    assert '247c9b3e' not in r.stdout + r.stderr


def test_verdicts_count_promise_tests_on_the_kerbside_route_only(tmp_path):
    # 4 per route on two routes and 7 promise tests (kerbside only).
    r = bash('PY=%s; ktp_verdicts %s 4 7 sextant kerbside=0 direct=0; '
             'echo "rc=$?"' % (sys.executable, tmp_path))
    assert 'expected at least 15' in r.stdout, r.stdout + r.stderr
    r = bash('PY=%s; ktp_verdicts %s 4 7 sextant direct=0; echo "rc=$?"'
             % (sys.executable, tmp_path))
    assert 'expected at least 4' in r.stdout, r.stdout + r.stderr
    r = bash('PY=%s; ktp_verdicts %s 4 7 promises kerbside=0; '
             'echo "rc=$?"' % (sys.executable, tmp_path))
    assert 'expected at least 7' in r.stdout and 'rc=1' in r.stdout, \
        r.stdout + r.stderr


def test_leakcheck_usage_errors(tmp_path, capsys):
    from kerbside_tempest_plugin.cmd import leakcheck
    assert leakcheck.main([str(tmp_path / 'absent')]) == 2
    assert 'no such directory' in capsys.readouterr().err
    jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln'
    (tmp_path / 'a.json').write_text('{"auth": "%s"}' % jwt)
    (tmp_path / 'b.pcap').write_bytes(b'\xd4\xc3\xb2\xa1\0\0' + jwt.encode())
    assert leakcheck.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert 'a.json' in out and 'b.pcap' not in out and jwt not in out
