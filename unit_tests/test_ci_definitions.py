"""The CI-definition checkers reject broken definitions (tools/lint-ci.sh).

Each checker is fed the repository's own file (must pass) and deliberately
broken copies (must be rejected, with a line that names the problem):
actionlint for the GitHub workflow, tools/check_zuul.py (own checks, and
Zuul's schema when the zuul venv exists) for .zuul.yaml, and
tools/zuul_playbooks.py running real ansible-playbook for the playbooks.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from unit_tests.conftest import REPO_ROOT
from unit_tests.conftest import require_tools

sys.path.insert(0, str(REPO_ROOT / 'tools'))
import check_zuul  # noqa: E402
import zuul_playbooks  # noqa: E402

VENV_BIN = pathlib.Path(sys.executable).parent
ZUUL_VENV = pathlib.Path(os.environ.get('KTP_ZUUL_VENV') or os.path.join(
    os.path.expanduser('~'), '.cache', 'kerbside-tempest-plugin',
    'zuul-venv'))

GOOD_ZUUL = textwrap.dedent('''\
    - job:
        name: ktp-demo
        parent: base
        nodeset: debian-bookworm
        timeout: 600
        run: playbooks/run.yaml
    - project:
        check:
          jobs:
            - ktp-demo
    ''')


def _actionlint(path):
    env = dict(os.environ, PATH='%s:%s' % (VENV_BIN, os.environ['PATH']))
    require_tools('actionlint')
    return subprocess.run(
        ['actionlint', '-no-color', str(path)], env=env, cwd=path.parent,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=60)


def _workflow_copy(tmp_path, old, new):
    text = (REPO_ROOT / '.github/workflows/direct-qemu.yml').read_text()
    assert old in text
    wf = tmp_path / '.github' / 'workflows' / 'direct-qemu.yml'
    wf.parent.mkdir(parents=True)
    wf.write_text(text.replace(old, new))
    return wf


def test_workflow_passes_actionlint():
    proc = _actionlint(REPO_ROOT / '.github/workflows/direct-qemu.yml')
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize('old,new,expect', [
    # A typo in a job key.
    ('    runs-on: ubuntu-latest\n    container:\n      image: debian:12\n'
     '      options: --privileged\n    timeout-minutes: 90\n    steps:',
     '    run-on: ubuntu-latest\n    container:\n      image: debian:12\n'
     '      options: --privileged\n    timeout-minutes: 90\n    steps:',
     'run-on'),
    # An expression naming a context property that does not exist.
    ('if: always()', 'if: ${{ github.no_such_property }}',
     'no_such_property'),
    # A run: script shellcheck rejects (unquoted variable in a test).
    ('run: ./tools/run-tests.sh',
     'run: if [ $GITHUB_REF = x ]; then ./tools/run-tests.sh; fi',
     'SC2086'),
])
def test_actionlint_rejects_broken_workflow(tmp_path, old, new, expect):
    proc = _actionlint(_workflow_copy(tmp_path, old, new))
    assert proc.returncode != 0, proc.stdout
    assert expect in proc.stdout


def _zuul_tree(tmp_path, text, playbooks=('playbooks/run.yaml',)):
    for rel in playbooks:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text('- hosts: all\n  tasks: []\n')
    path = tmp_path / '.zuul.yaml'
    path.write_text(text)
    return path


def test_repo_zuul_file_passes():
    assert check_zuul.check(str(REPO_ROOT / '.zuul.yaml')) == []


def test_good_zuul_file_passes(tmp_path):
    assert check_zuul.check(str(_zuul_tree(tmp_path, GOOD_ZUUL))) == []


@pytest.mark.parametrize('old,new,expect', [
    ('timeout: 600', 'timout: 600', "unknown attribute 'timout'"),
    ('timeout: 600', 'timeout: "600"', "'timeout' must be int"),
    ('run: playbooks/run.yaml', 'run: playbooks/missing.yaml',
     'playbook playbooks/missing.yaml does not exist'),
    ('run: playbooks/run.yaml', 'run: /abs/run.yaml',
     'must be a relative .yaml path'),
    ('        - ktp-demo', '        - ktp-other',
     'job ktp-other is not defined in this file'),
    ('parent: base', 'parent: ktp-nope', 'parent ktp-nope is neither base'),
    ('    parent: base\n', '    parent: base\n    parent: base\n',
     "duplicate key 'parent'"),
    ('- project:', '- projekt:', "unknown item type 'projekt'"),
    ('      jobs:', '      jobz:', "unknown attribute 'jobz'"),
    ('nodeset: debian-bookworm', 'nodeset: [a]', "'nodeset' must be"),
])
def test_check_zuul_rejects_broken_file(tmp_path, old, new, expect):
    assert old in GOOD_ZUUL
    errors = check_zuul.check(str(_zuul_tree(
        tmp_path, GOOD_ZUUL.replace(old, new))))
    assert any(expect in e for e in errors), errors


@pytest.mark.parametrize('text,expect', [
    ('job: {name: x}\n', 'the top level must be a list'),
    ('- job: [x]\n  project: {}\n', 'exactly one key'),
    ('- job: {name: x\n', 'is not valid YAML'),
])
def test_check_zuul_rejects_malformed_file(tmp_path, text, expect):
    errors = check_zuul.check(str(_zuul_tree(tmp_path, text)))
    assert len(errors) == 1 and expect in errors[0], errors


def test_check_zuul_cli_exit_status(tmp_path):
    bad = _zuul_tree(tmp_path, GOOD_ZUUL.replace('timeout', 'timout'))
    good = REPO_ROOT / '.zuul.yaml'
    assert check_zuul.main([str(good)]) == 0
    assert check_zuul.main([str(bad)]) == 1


def test_zuul_own_schema_rejects_broken_file(tmp_path):
    """Zuul's voluptuous schema (zuul.configloader) on a broken file."""
    python = ZUUL_VENV / 'bin' / 'python'
    if not python.exists():
        pytest.skip('no zuul venv at %s: tools/lint-ci.sh zuul makes it'
                    % ZUUL_VENV)
    bad = _zuul_tree(tmp_path, GOOD_ZUUL.replace(
        'timeout: 600', 'timeout: 600\n    voting: maybe'))
    script = str(REPO_ROOT / 'tools' / 'check_zuul.py')
    proc = subprocess.run(
        [str(python), script, '--zuul-schema', str(bad)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=120)
    assert proc.returncode == 1, proc.stdout
    assert 'zuul schema, job ktp-demo' in proc.stdout
    assert "data['voting']" in proc.stdout
    good = subprocess.run(
        [str(python), script, '--zuul-schema', str(REPO_ROOT / '.zuul.yaml')],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=120)
    assert good.returncode == 0, good.stdout


@pytest.fixture
def work_root(tmp_path):
    require_tools('rsync')
    if shutil.which('ansible-playbook', path=str(VENV_BIN)) is None:
        require_tools('ansible-playbook')
    zuul_playbooks.ensure_posix_collection()
    return zuul_playbooks.WorkRoot(str(tmp_path / 'root'))


POST = (REPO_ROOT / 'playbooks/direct-qemu/post.yaml').read_text()


@pytest.mark.parametrize('old,new,expect', [
    # Collects into the wrong place under log_root.
    ('log_root }}/kerbside-artifacts/', 'log_root }}/elsewhere/',
     'collected nothing'),
    # Collects whether or not the node has artifacts: rsync fails.
    ('      when: kerbside_artifacts.stat.isdir | default(false)\n', '',
     'failed, exit'),
])
def test_post_check_rejects_broken_post_playbook(tmp_path, work_root, old,
                                                 new, expect):
    assert old in POST
    bad = tmp_path / 'post.yaml'
    bad.write_text(POST.replace(old, new))
    with pytest.raises(zuul_playbooks.PlaybookError) as e:
        zuul_playbooks.post_check(work_root, [('job', 'post-run', str(bad))])
    assert expect in str(e.value)


def test_post_check_passes_repo_post_playbook(work_root):
    zuul_playbooks.post_check(
        work_root, [('job', 'post-run', 'playbooks/direct-qemu/post.yaml')])


RUN = (REPO_ROOT / 'playbooks/direct-qemu/run.yaml').read_text()
RUN_LINE = zuul_playbooks.JOB_COMMANDS['playbooks/direct-qemu/run.yaml']


@pytest.mark.parametrize('old,new,expect', [
    # tox runs even when setup fails.
    ('./tools/setup.sh && .venv/bin/tox',
     './tools/setup.sh || true; .venv/bin/tox', 'passed although'),
    # The artifacts go where the post-run playbook does not look.
    ('KTP_ARTIFACTS: "{{ ansible_user_dir }}/kerbside-artifacts"',
     'KTP_ARTIFACTS: /tmp/elsewhere', 'the post playbook reads'),
    # Not in the project checkout.
    ('chdir: "{{ ansible_user_dir }}/{{ zuul.project.src_dir }}"',
     'chdir: "{{ ansible_user_dir }}"', 'failed, exit'),
])
def test_run_check_rejects_broken_run_playbook(tmp_path, work_root, old, new,
                                               expect):
    assert old in RUN
    bad = tmp_path / 'playbooks' / 'direct-qemu' / 'run.yaml'
    bad.parent.mkdir(parents=True)
    bad.write_text(RUN.replace(old, new))
    with pytest.raises(zuul_playbooks.PlaybookError) as e:
        zuul_playbooks.run_check(
            str(tmp_path), [('job', 'run', str(bad)),
                            ('job', 'post-run', 'playbooks/post.yaml')],
            commands={str(bad): RUN_LINE})
    assert expect in str(e.value)


def test_run_check_rejects_command_missing_from_readme(tmp_path):
    with pytest.raises(zuul_playbooks.PlaybookError) as e:
        zuul_playbooks.run_check(
            str(tmp_path), [('job', 'run', 'playbooks/unit/run.yaml')],
            commands={'playbooks/unit/run.yaml': './tools/not-in-readme'})
    assert 'README.md no longer has the line' in str(e.value)


def test_run_jobs_post_run_runs_after_a_failed_run(tmp_path, work_root):
    """A failed run playbook skips the next run, post-run still runs."""
    def playbook(name, task):
        path = tmp_path / name
        path.write_text('- hosts: all\n  gather_facts: false\n  tasks:\n'
                        '    - ' + task + '\n')
        return str(path)

    mark = ('ansible.builtin.copy: {content: "%s", '
            'dest: "{{ zuul.executor.log_root }}/%s"}')
    playbooks = [
        ('j', 'run', playbook('run1.yaml', 'ansible.builtin.fail: '
                                           '{msg: deliberately}')),
        ('j', 'run', playbook('run2.yaml', mark % ('x', 'run2-ran'))),
        ('j', 'post-run', playbook('post.yaml', mark % ('x', 'post-ran'))),
    ]
    keep = tmp_path / 'kept'
    with pytest.raises(zuul_playbooks.PlaybookError) as e:
        zuul_playbooks.run_jobs(str(keep), playbooks, ['j'], {'j': 120})
    assert 'run1.yaml (job j) failed' in str(e.value)
    logs = keep / 'j' / 'logs'
    assert (logs / 'post-ran').exists()
    assert not (logs / 'run2-ran').exists()
