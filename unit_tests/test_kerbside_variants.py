"""lane/kerbside_variants.py: Kerbside venv copies with one promise broken,
and benchmarks/broken_promises.py's verdicts.

- On a small synthetic venv (python -m venv, a stand-in kerbside package
  holding the source text each edit expects): the copy runs its own
  package through its console scripts (a long path gets the /bin/sh
  trampoline), a copy whose scripts still name the base's python is
  refused, a missing or repeated source text fails before anything is
  copied, the base is never written.
- On the real Kerbside venv (integration): every variant is built, its
  edit landed, the copy imports its own package (python and bin/kerbside),
  the base's patched files keep their sha256, and a probe run with both
  pythons (Kerbside's own functions, the database stubbed) differs in the
  one behaviour the variant breaks and in nothing else.
- The benchmark's table and verdicts on synthetic promise.json files.
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from kerbside_tempest_plugin.common import tools
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane import kerbside_variants as kv

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_bench():
    path = REPO_ROOT / 'benchmarks' / 'broken_promises.py'
    spec = importlib.util.spec_from_file_location('bench_broken', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()


def _sha(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


# -- a synthetic venv ---------------------------------------------------

# Just enough of each file for every edit's source text to occur once
# and the result to compile.
FAKE_SOURCES = {
    '__init__.py': '',
    'db.py': '''\
        def terminate_session(session_id, source, uuid, reason=None):
            remove_session(session_id)
            request_session_termination(session_id, reason=reason)
            add_audit_event(source, uuid, session_id, None, None, None, 'x')


        %s            EVENTS.append(message)
        ''' % kv.VARIANTS['audit-dropped'].edits[0].old,
    'api.py': '''\
        def sessions(flask, db, json, enc):
            a = flask.render_template(
                            'sessions.html', sessions=db.get_sessions(),
                            x=1)
            b = (
                        json.dumps(db.get_sessions(), indent=4, sort_keys=True,
                                   cls=enc))
            return a, b
        ''',
    'consoletoken.py': '''\
        def create_token(now, config):
            if True:
                if True:
                    expiry = now + (config.CONSOLE_TOKEN_DURATION * 60)
            return expiry
        ''',
    'rpc/__init__.py': '',
    'rpc/servicer.py': '''\
        def build_firewall_policy(proto_mode, permitted):
            return dict(
                mode=proto_mode, permitted_channels=permitted)
        ''',
}

FAKE_SCRIPT = '''#!%s
import sys
import kerbside
print('KTP-KERBSIDE', kerbside.__file__)
'''


def make_fake_venv(root):
    """A real venv (no pip) at `root` with a stand-in kerbside package,
    its bytecode, and a bin/kerbside console script.
    """
    root = str(root)
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', root],
                   check=True)
    site = subprocess.run(
        [os.path.join(root, 'bin', 'python'), '-c',
         'import sysconfig; print(sysconfig.get_path("purelib"))'],
        capture_output=True, text=True, check=True).stdout.strip()
    pkg = os.path.join(site, 'kerbside')
    for rel, text in FAKE_SOURCES.items():
        path = os.path.join(pkg, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(textwrap.dedent(text))
    subprocess.run([os.path.join(root, 'bin', 'python'), '-m', 'compileall',
                    '-q', pkg], check=True)
    script = os.path.join(root, 'bin', 'kerbside')
    with open(script, 'w') as f:
        f.write(FAKE_SCRIPT % os.path.join(root, 'bin', 'python3'))
    os.chmod(script, 0o755)
    return root, pkg


def _tree_digest(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                out[os.path.relpath(path, root)] = _sha(path)
    return out


@pytest.fixture
def fake_venv(tmp_path):
    return make_fake_venv(tmp_path / 'base')


def _run_script(path):
    proc = subprocess.run([path], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [ln.split(' ', 1)[1] for ln in proc.stdout.splitlines()
            if ln.startswith('KTP-KERBSIDE ')][-1]


def test_variants_are_declared():
    assert list(kv.VARIANTS) == [
        'terminate-noop', 'firewall-ignores-list', 'audit-dropped',
        'token-never-expires', 'terminate-keeps-tokens', 'sessions-hidden']
    for v in kv.VARIANTS.values():
        assert v.promise in kv.PROMISES
        assert v.description and '\n' not in v.description
        assert v.edits and v.why
        for e in v.edits:
            assert e.old != e.new
            assert '# ktp-variant %s' % v.name in e.new
    assert {v.promise for v in kv.VARIANTS.values()} == set(kv.PROMISES)
    with pytest.raises(kv.VariantError, match='known: terminate-noop'):
        kv.variant('no-such-variant')


@pytest.mark.parametrize('name', list(kv.VARIANTS))
def test_fake_venv_copy(fake_venv, tmp_path, name):
    base, pkg = fake_venv
    before = _tree_digest(base)
    dest = str(tmp_path / 'copies' / name)
    info = kv.make_broken_venv(base, name, dest)
    assert _tree_digest(base) == before          # the base is only read
    v = kv.VARIANTS[name]
    copy_pkg = os.path.join(dest, os.path.relpath(pkg, base))
    for rel in {e.path for e in v.edits}:
        text = pathlib.Path(copy_pkg, rel).read_text()
        assert '# ktp-variant %s' % name in text
        assert info['files'][rel] == {
            'before': _sha(os.path.join(pkg, rel)),
            'after': _sha(os.path.join(copy_pkg, rel))}
        stem = os.path.splitext(os.path.basename(rel))[0]
        cache = os.path.join(os.path.dirname(os.path.join(copy_pkg, rel)),
                             '__pycache__')
        assert not [p for p in os.listdir(cache)
                    if p.startswith(stem + '.')], 'stale bytecode kept'
    # Bytecode of the files not edited is kept.
    assert os.listdir(os.path.join(copy_pkg, '__pycache__'))
    assert info['promise'] == v.promise
    assert info['diff'].startswith('--- a/kerbside/')
    assert kv.describe(dest)['variant'] == name
    assert kv.describe(base) is None
    # The copy's python and its console script run the copy's package.
    assert _run_script(os.path.join(dest, 'bin', 'kerbside')).startswith(
        dest + os.sep)
    assert kv.check_copy(dest) == []
    assert 'kerbside' in info['scripts']
    assert kv.script_interpreter(os.path.join(dest, 'bin', 'kerbside')) == \
        os.path.join(dest, 'bin', 'python3')
    # Quoted by some Pythons' venv (pyenv's 3.11.7), bare by Debian's.
    activate = pathlib.Path(dest, 'bin', 'activate').read_text()
    assert re.search(r'^VIRTUAL_ENV=["\']?%s["\']?$' % re.escape(dest),
                     activate, re.M), activate[:600]


def test_long_path_gets_the_sh_trampoline(fake_venv, tmp_path):
    base, _ = fake_venv
    dest = str(tmp_path / ('x' * 100) / 'audit-dropped')
    kv.make_broken_venv(base, 'audit-dropped', dest)
    script = os.path.join(dest, 'bin', 'kerbside')
    assert pathlib.Path(script).read_text().startswith('#!/bin/sh\n')
    assert kv.script_interpreter(script) == os.path.join(dest, 'bin',
                                                         'python3')
    assert _run_script(script).startswith(dest + os.sep)


def test_scripts_left_at_the_base_are_refused(fake_venv, tmp_path,
                                              monkeypatch):
    base, _ = fake_venv
    monkeypatch.setattr(kv, 'retarget_scripts', lambda b, d: [])
    dest = str(tmp_path / 'copy')
    with pytest.raises(kv.VariantError, match='bin/kerbside runs .*base'):
        kv.make_broken_venv(base, 'sessions-hidden', dest)
    assert not os.path.exists(dest)              # no half-made copy


def test_missing_source_text_fails_before_copying(fake_venv, tmp_path):
    base, pkg = fake_venv
    servicer = os.path.join(pkg, 'rpc', 'servicer.py')
    text = pathlib.Path(servicer).read_text()
    pathlib.Path(servicer).write_text(
        text.replace('permitted_channels=permitted', 'channels=permitted'))
    dest = str(tmp_path / 'copy')
    with pytest.raises(kv.VariantError, match='servicer.py: expected the '
                       'source text .* exactly once, found it 0 times'):
        kv.make_broken_venv(base, 'firewall-ignores-list', dest)
    assert not os.path.exists(dest)


def test_repeated_source_text_fails():
    e = kv.Edit('db.py', 'x = 1\n', 'x = 2\n')
    with pytest.raises(kv.VariantError, match='found it 2 times'):
        kv.apply_edits('x = 1\nx = 1\n', [e], 'db.py')
    assert kv.apply_edits('x = 1\ny = 1\n', [e]) == 'x = 2\ny = 1\n'


def test_refuses_existing_dest_and_variant_base(fake_venv, tmp_path):
    base, _ = fake_venv
    dest = tmp_path / 'copy'
    dest.mkdir()
    with pytest.raises(kv.VariantError, match='already exists'):
        kv.make_broken_venv(base, 'audit-dropped', str(dest))
    assert dest.is_dir()                         # not removed
    first = str(tmp_path / 'first')
    kv.make_broken_venv(base, 'audit-dropped', first)
    with pytest.raises(kv.VariantError, match='itself a variant copy'):
        kv.make_broken_venv(first, 'sessions-hidden',
                            str(tmp_path / 'second'))
    with pytest.raises(kv.VariantError, match='contain each other'):
        kv.make_broken_venv(base, 'audit-dropped',
                            os.path.join(base, 'inner'))


def test_cli_list(capsys):
    assert kv.main(['list']) == 0
    out = capsys.readouterr().out
    for v in kv.VARIANTS.values():
        assert v.name in out and v.promise in out


# -- the real Kerbside venv ---------------------------------------------

# Runs Kerbside's own functions with the database stubbed and prints what
# each promise's code path did, as one JSON line.
PROBE = r'''
import importlib, json
out = {}
from kerbside import db, consoletoken
from kerbside.rpc import servicer
calls = []
for name in ('remove_session', 'request_session_termination',
             'add_audit_event'):
    setattr(db, name, (lambda n: lambda *a, **k: calls.append(n))(name))
db.terminate_session('s1', 'src', 'u1', reason='r')
out['terminate'] = calls
importlib.reload(db)
made = []
class FakeSession:
    def __init__(self, *a): made.append('session')
    def __enter__(self): return self
    def __exit__(self, *a): return False
    def add(self, e): made.append('add')
    def commit(self): made.append('commit')
db.Session = FakeSession
db.add_audit_event('src', 'u1', None, None, None, None, 'm')
out['audit'] = made
importlib.reload(db)
stamped = []
db.add_token = lambda *a: stamped.append(a) or {'token': a[0],
                                                'session_id': a[1]}
db.add_audit_event = lambda *a: None
consoletoken.create_token('src', 'u1')
out['token_lifetime_s'] = stamped[0][5] - stamped[0][4]
out['permitted'] = list(servicer.build_firewall_policy().permitted_channels)
from kerbside import api
import flask_jwt_extended
db.get_sessions = lambda: {'s1': {'source': 'src', 'uuid': 'u1'}}
with api.app.app_context():
    jwt = flask_jwt_extended.create_access_token(identity='probe')
r = api.app.test_client().get('/session', headers={
    'Authorization': 'Bearer ' + jwt, 'Accept': 'application/json'})
out['sessions'] = [r.status_code, r.get_json()]
print('KTP-PROBE ' + json.dumps(out, sort_keys=True))
'''

BASE_PROBE = {
    'terminate': ['remove_session', 'request_session_termination',
                  'add_audit_event'],
    'audit': ['session', 'add', 'commit'],
    'token_lifetime_s': 60,
    'permitted': [1, 2],
    'sessions': [200, {'s1': {'source': 'src', 'uuid': 'u1'}}],
}

# What each variant's probe says instead (every other key as the base's).
BROKEN_PROBE = {
    'terminate-noop': {'terminate': ['add_audit_event']},
    'terminate-keeps-tokens': {'terminate': ['request_session_termination',
                                             'add_audit_event']},
    'audit-dropped': {'audit': []},
    'token-never-expires': {'token_lifetime_s': 10 * 365 * 24 * 3600},
    'firewall-ignores-list': {'permitted': []},
    'sessions-hidden': {'sessions': [200, {}]},
}


def _probe(venv, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('KERBSIDE_')}
    env.update(KERBSIDE_AUTH_SECRET_SEED='ab' * 32,
               KERBSIDE_CONSOLE_TOKEN_DURATION='1',
               KERBSIDE_FIREWALL_PERMITTED_CHANNELS='main,display',
               KERBSIDE_LOG_OUTPUT_PATH=str(tmp_path / 'probe.log'))
    proc = subprocess.run([os.path.join(venv, 'bin', 'python'), '-c', PROBE],
                          capture_output=True, text=True, env=env,
                          timeout=120, cwd=str(tmp_path))
    lines = [ln for ln in proc.stdout.splitlines()
             if ln.startswith('KTP-PROBE ')]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    return json.loads(lines[-1].split(' ', 1)[1])


@pytest.fixture(scope='module')
def real_venv():
    venv = tools.default_kerbside_venv()
    problems = lane_kerbside.KerbsideVenv(venv).check()
    if problems:
        pytest.fail('Kerbside venv unusable (%s); run kerbside-harness '
                    'setup' % '; '.join(problems))
    return venv


@pytest.fixture(scope='module')
def base_probe(real_venv, tmp_path_factory):
    return _probe(real_venv, tmp_path_factory.mktemp('probe'))


@pytest.mark.integration
def test_real_base_probe(base_probe):
    assert base_probe == BASE_PROBE


@pytest.mark.integration
@pytest.mark.parametrize('name', list(kv.VARIANTS))
def test_real_variant(real_venv, base_probe, tmp_path, name):
    v = kv.VARIANTS[name]
    base_pkg = kv.package_dir(real_venv)
    files = sorted({e.path for e in v.edits})
    before = {rel: _sha(os.path.join(base_pkg, rel)) for rel in files}
    dest = str(tmp_path / name)
    try:
        info = kv.make_broken_venv(real_venv, name, dest)
        # The base is untouched: the patched files' checksums.
        assert {rel: _sha(os.path.join(base_pkg, rel))
                for rel in files} == before
        assert {rel: info['files'][rel]['before'] for rel in files} == before
        pkg = kv.package_dir(dest)
        assert pkg.startswith(dest + os.sep)
        for rel in files:
            text = pathlib.Path(pkg, rel).read_text()
            assert '# ktp-variant %s' % name in text
            assert _sha(os.path.join(pkg, rel)) != before[rel]
        for e in v.edits:
            assert e.new in pathlib.Path(pkg, e.path).read_text()
        # The copy imports its own package ...
        proc = subprocess.run(
            [os.path.join(dest, 'bin', 'python'), '-c',
             'import kerbside; print(kerbside.__file__)'],
            capture_output=True, text=True, timeout=60)
        assert proc.stdout.strip().splitlines()[-1] == os.path.join(
            pkg, '__init__.py')
        # ... and so do its console scripts (Python says which files it
        # loads with PYTHONVERBOSE).
        env = dict(os.environ, PYTHONVERBOSE='1',
                   KERBSIDE_LOG_OUTPUT_PATH=str(tmp_path / 'k.log'))
        proc = subprocess.run([os.path.join(dest, 'bin', 'kerbside'),
                               '--help'], capture_output=True, text=True,
                              env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert os.path.join(pkg, 'main.py') in proc.stderr
        assert base_pkg not in proc.stderr
        for script in ('kerbside', 'gunicorn'):
            assert kv.script_interpreter(os.path.join(
                dest, 'bin', script)).startswith(dest + os.sep)
        # It breaks what it says, and nothing else the probe sees.
        expected = dict(BASE_PROBE, **BROKEN_PROBE[name])
        assert _probe(dest, tmp_path) == expected
        if name == 'sessions-hidden':
            # The lane's own check of a Kerbside venv passes on the copy.
            assert lane_kerbside.KerbsideVenv(dest).check() == []
    finally:
        shutil.rmtree(dest, ignore_errors=True)


# -- benchmarks/broken_promises.py --------------------------------------

def _write(root, name, passed, promises, failures=(), venv='/v/copy',
           error=None):
    d = root / 'kerbside' / 'artifacts' / name
    d.mkdir(parents=True)
    (d / 'promise.json').write_text(json.dumps({
        'name': name,
        'route': 'kerbside', 'passed': passed, 'promises': promises,
        'error': error, 'kerbside_build': {'venv': venv},
        'failures': [{'promise': p, 'check': 'c', 'message': m}
                     for p, m in failures]}))


def _records(root):
    return bench.find_promises(str(root / 'kerbside' / 'artifacts'))


def test_bench_caught_for_the_right_reason(tmp_path):
    _write(tmp_path, 'promise-terminate', False, ['terminate', 'audit'],
           [('terminate', 'ryll still up 30 s after the terminate POST')])
    _write(tmp_path, 'promise-sessions', True, ['sessions'])
    j = bench.judge('terminate', _records(tmp_path), rc=1)
    assert j['verdict'] == 'CAUGHT' and j['caught'] and j['right_reason']
    assert j['failed'] == ['promise-terminate']
    assert j['named'] == ['terminate']
    assert j['reasons'] == [{'test': 'promise-terminate', 'message':
                             'ryll still up 30 s after the terminate POST'}]
    _write(tmp_path, 'promise-scope', True, ['tokens', 'terminate'])
    j = bench.judge('terminate', _records(tmp_path), rc=1)
    assert j['verdict'] == 'CAUGHT' and j['missed_by'] == ['promise-scope']
    assert 'also say they check terminate, and passed: promise-scope' in \
        bench.evidence([{'label': 'terminate-noop', 'promise': 'terminate',
                         'judged': j, 'seconds': 1.0}])


def test_bench_caught_for_another_reason(tmp_path):
    _write(tmp_path, 'promise-terminate', False, ['terminate'],
           [('audit', 'no "Session terminated" event')])
    _write(tmp_path, 'promise-tokens', True, ['tokens'])
    j = bench.judge('tokens', _records(tmp_path), rc=1)
    assert j['verdict'] == 'CAUGHT-OTHER' and j['caught']
    assert not j['right_reason']
    assert j['checked_by'] == ['promise-tokens']
    assert j['missed_by'] == ['promise-tokens']


def test_bench_not_caught_and_no_results(tmp_path):
    _write(tmp_path, 'promise-audit', True, ['audit'])
    j = bench.judge('audit', _records(tmp_path), rc=0)
    assert j['verdict'] == 'NOT CAUGHT' and not j['caught']
    assert j['missed_by'] == ['promise-audit']
    empty = bench.judge('audit', _records(tmp_path / 'none'), rc=2)
    assert empty['verdict'] == 'NO RESULTS' and not empty['caught']


def test_bench_missing_promise_json_and_tempest_failures(tmp_path):
    _write(tmp_path, 'promise-audit', True, ['audit'])
    j = bench.judge('audit', _records(tmp_path), rc=1,
                    expected=['promise-audit', 'promise-firewall'])
    assert j['verdict'] == 'CAUGHT-OTHER'
    assert j['missing'] == ['promise_firewall']
    # tempest's names are the test methods; promise.json's the stories.
    trace = ('{0} kerbside_tempest_plugin.tests.scenario.test_kerbside_'
             'promises.SextantKerbsidePromisesTest.test_sextant_promise_'
             'audit[id-1234] [71.2s] ... FAILED\n'
             '{0} kerbside_tempest_plugin.tests.scenario.test_kerbside_'
             'promises.SextantKerbsidePromisesTest.test_sextant_promise_'
             'sessions [3.0s] ... ok\n'
             '{0} kerbside_tempest_plugin.tests.scenario.test_kerbside_'
             'promises.SextantKerbsidePromisesTest.test_sextant_promise_'
             'scope [9.0s] ... FAILED\n')
    outcomes = bench.tempest_outcomes(trace)
    assert outcomes == {'test_sextant_promise_audit': 'FAILED',
                        'test_sextant_promise_sessions': 'ok',
                        'test_sextant_promise_scope': 'FAILED'}
    assert bench.test_key('test_sextant_promise_token_expiry') == \
        bench.test_key('promise-token-expiry') == 'promise_token_expiry'
    j = bench.judge('audit', _records(tmp_path), rc=1, outcomes=outcomes)
    assert j['failed'] == ['promise-audit'] and j['verdict'] == 'CAUGHT-OTHER'
    # A test tempest failed with no promise.json: it died before writing.
    assert j['missing'] == ['promise_scope']
    text = bench.table([{'label': 'audit-dropped', 'promise': 'audit',
                         'judged': j, 'seconds': 5.0}])
    assert 'audit, scope (no promise.json)' in text


def test_bench_wrong_venv_and_errors(tmp_path):
    _write(tmp_path, 'promise-audit', False, ['audit'],
           [('audit', 'no event')], venv='/v/base')
    _write(tmp_path, 'promise-tokens', False, ['tokens'], venv='/v/base',
           error='HarnessError: the guest did not boot')
    j = bench.judge('audit', _records(tmp_path), rc=1, venv='/v/copy')
    assert j['verdict'] == 'WRONG VENV' and not j['caught']
    assert j['wrong_venv'] == ['promise-audit (/v/base)',
                               'promise-tokens (/v/base)']
    assert j['errors'] == ['promise-tokens: HarnessError: the guest did not '
                           'boot']
    assert j['errored'] == ['promise-tokens']
    assert 'audit, tokens (error)' in bench.table([
        {'label': 'audit-dropped', 'promise': 'audit', 'judged': j,
         'seconds': 1.0}])
    rows = [{'label': 'audit-dropped', 'promise': 'audit', 'judged': j,
             'seconds': 1.0}]
    assert bench.exit_status(rows) == 1
    assert 'ran another Kerbside venv: promise-audit (/v/base), ' in \
        bench.evidence(rows)
    assert bench.judge('audit', _records(tmp_path), rc=1,
                       venv='/v/base')['verdict'] == 'CAUGHT'
    assert not bench.judge_control(_records(tmp_path / 'x'), 0,
                                   venv='/v/base')['passed']


def test_bench_unreadable_promise_json(tmp_path):
    d = tmp_path / 'kerbside' / 'artifacts' / 'promise-x'
    d.mkdir(parents=True)
    (d / 'promise.json').write_text('{not json')
    records = _records(tmp_path)
    assert records[0]['passed'] is False
    assert 'unreadable promise.json' in records[0]['failures'][0]['message']


def test_bench_control_table_and_exit(tmp_path):
    good = tmp_path / 'good'
    _write(good, 'promise-sessions', True, ['sessions'])
    _write(good, 'promise-audit', True, ['audit'])
    control = bench.judge_control(_records(good), rc=0)
    assert control['verdict'] == 'PASSED' and control['passed']
    assert not bench.judge_control(_records(good), rc=1)['passed']
    assert not bench.judge_control([], rc=0)['passed']
    bad = tmp_path / 'bad'
    _write(bad, 'promise-sessions', True, ['sessions'])
    _write(bad, 'promise-audit', False, ['audit'], [('audit', 'empty')])
    failed_control = bench.judge_control(_records(bad), rc=1)
    assert failed_control['verdict'] == 'FAILED'
    assert failed_control['failed'] == ['promise-audit']

    caught = bench.judge('audit', _records(bad), rc=1)
    missed = bench.judge('sessions', _records(good), rc=0)
    rows = [{'label': 'audit-dropped', 'promise': 'audit',
             'judged': caught, 'seconds': 312.4},
            {'label': 'sessions-hidden', 'promise': 'sessions',
             'judged': missed, 'seconds': 298.0},
            {'label': 'control', 'promise': None, 'judged': control,
             'seconds': 301.0}]
    text = bench.table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ['variant', 'breaks', 'tests']
    assert lines[2].split() == ['audit-dropped', 'audit', 'audit',
                                'audit', 'yes', 'CAUGHT', '1', '312']
    assert 'NOT CAUGHT' in lines[3] and ' NO ' in lines[3]
    assert lines[4].split() == ['control', '-', 'none', '-', '-', 'PASSED',
                                '0', '301']
    assert bench.exit_status(rows) == 1          # a variant not caught
    assert bench.exit_status([rows[0], rows[2]]) == 0
    rows[2]['judged'] = failed_control
    assert bench.exit_status([rows[0], rows[2]]) == 1   # control failed
    ev = bench.evidence(rows)
    assert 'audit-dropped (breaks audit): CAUGHT' in ev
    assert '  promise-audit: empty' in ev
    assert 'tests that check sessions: promise-sessions; passed anyway: ' \
        'promise-sessions' in ev


def test_bench_main_with_a_stand_in_job(fake_venv, tmp_path, monkeypatch,
                                        capsys):
    """The whole benchmark on the synthetic venv, the job replaced by one
    that writes promise.json files: the audit-dropped copy fails the audit
    test, the sessions-hidden copy passes everything (not caught), the
    control passes.
    """
    base, _ = fake_venv
    seen = []

    def fake_job(venv, artifacts, log_path, regex, timeout):
        info = kv.describe(venv)
        seen.append((info or {}).get('variant', 'control'))
        assert os.path.isdir(venv) and regex == 'promises'
        root = pathlib.Path(artifacts)
        broken = info and info['variant'] == 'audit-dropped'
        _write(root, 'promise-audit', not broken, ['audit'],
               [('audit', 'no audit event')] if broken else (), venv=venv)
        _write(root, 'promise-sessions', True, ['sessions'], venv=venv)
        with open(log_path, 'w') as f:
            f.write('job output\n')
        return (1 if broken else 0), 12.5, ''

    monkeypatch.setattr(bench, 'run_job', fake_job)
    out = tmp_path / 'out'
    status = bench.main(['--variants', 'audit-dropped,sessions-hidden',
                         '--base', base, '--out', str(out)])
    assert status == 1                   # sessions-hidden was not caught
    assert seen == ['audit-dropped', 'sessions-hidden', 'control']
    text = (out / 'summary.txt').read_text()
    lines = text.splitlines()
    assert lines[2].split()[:6] == ['audit-dropped', 'audit', 'audit',
                                    'audit', 'yes', 'CAUGHT']
    assert 'NOT CAUGHT' in lines[3]
    assert lines[4].split()[:6] == ['control', '-', 'none', '-', '-',
                                    'PASSED']
    assert '/proc/loadavg at start' in text
    assert not (out / 'venvs' / 'audit-dropped').exists()   # removed
    assert '# ktp-variant audit-dropped' in (
        out / 'runs' / 'audit-dropped.diff').read_text()
    results = json.loads((out / 'results.json').read_text())
    assert [r['label'] for r in results['rows']] == [
        'audit-dropped', 'sessions-hidden', 'control']
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last['status'] == 1
    assert last['rows']['audit-dropped']['verdict'] == 'CAUGHT'

    # Judged again from what was kept: the same table, nothing run.
    seen.clear()
    assert bench.main(['--rejudge', str(out)]) == 1
    assert seen == []
    again = (out / 'summary.txt').read_text()
    assert again.splitlines()[:5] == lines[:5]
    assert '(judged again from the kept artifacts: ' in again

    seen.clear()
    assert bench.main(['--variants', 'audit-dropped', '--base', base,
                       '--out', str(tmp_path / 'out2'),
                       '--keep-venvs']) == 0
    assert (tmp_path / 'out2' / 'venvs' / 'audit-dropped').is_dir()
