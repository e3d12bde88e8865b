""".ci/run runs the README's two commands, verbatim and in order, and the
test command does not lean on an exported PATH."""

import re

from unit_tests.conftest import REPO_ROOT

# Lines of .ci/run that are plumbing around the commands, not commands.
_PLUMBING = re.compile(r'^(set |cd |echo |\[ |exit\b|[A-Za-z_][A-Za-z0-9_]*=)')


def readme_commands():
    """The first two fenced blocks of README.md, one command each."""
    text = (REPO_ROOT / 'README.md').read_text()
    blocks = re.findall(r'^```[^\n]*\n(.*?)^```', text, re.M | re.S)
    assert len(blocks) >= 2, 'README.md has fewer than two ``` blocks'
    commands = []
    for block in blocks[:2]:
        lines = [ln for ln in block.splitlines() if ln.strip()]
        assert len(lines) == 1, 'a README command block holds one line: %r' \
            % block
        commands.append(lines[0])
    return commands


def ci_run_commands():
    lines = (REPO_ROOT / '.ci' / 'run').read_text().splitlines()
    return [ln for ln in lines[1:] if ln.strip() and
            not ln.lstrip().startswith('#') and not _PLUMBING.match(ln)]


def test_the_readme_commands_are_the_known_two():
    assert readme_commands() == [
        './tools/setup.sh && .venv/bin/tox -e direct-qemu',
        './tools/run-tests.sh']


def test_ci_run_runs_exactly_the_readme_commands_in_order():
    assert ci_run_commands() == readme_commands()


def test_ci_run_is_executable_bash():
    path = REPO_ROOT / '.ci' / 'run'
    assert path.stat().st_mode & 0o111
    assert path.read_text().startswith('#!/usr/bin/env bash\n')


def test_the_scripts_do_not_export_path():
    for script in ('tools/run-tests.sh', 'tools/setup.sh',
                   'tools/direct-qemu-job.sh', 'tools/wheel-install-test.sh',
                   '.ci/run'):
        text = (REPO_ROOT / script).read_text()
        assert not re.search(r'^\s*(export\s+)?PATH=', text, re.M), script


def test_run_tests_hooks_the_ci_lint_script():
    text = (REPO_ROOT / 'tools' / 'run-tests.sh').read_text()
    assert 'if [ -x tools/lint-ci.sh ]; then\n    step lint-ci ' \
        './tools/lint-ci.sh\nfi' in text
    assert 'tools/wheel-install-test.sh' in text


def _stub_checkout(tmp_path, codes):
    """A copy of .ci/run beside stand-ins for the README's commands, each
    recording its call and exiting with codes[name].
    """
    import os
    import shutil
    (tmp_path / '.ci').mkdir()
    shutil.copy(REPO_ROOT / '.ci' / 'run', tmp_path / '.ci' / 'run')
    for rel in ('tools/setup.sh', '.venv/bin/tox', 'tools/run-tests.sh'):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('#!/bin/sh\necho "%s $*" >> %s/calls\nexit %d\n' % (
            rel, tmp_path, codes.get(rel, 0)))
        os.chmod(path, 0o755)


def _ci_run(tmp_path):
    import subprocess
    run = subprocess.run(['bash', str(tmp_path / '.ci' / 'run')],
                         capture_output=True, text=True, timeout=60)
    calls = (tmp_path / 'calls').read_text().splitlines()
    return run.returncode, calls


def test_ci_run_passes_only_when_both_commands_pass(tmp_path):
    _stub_checkout(tmp_path, {})
    assert _ci_run(tmp_path) == (0, ['tools/setup.sh ',
                                     '.venv/bin/tox -e direct-qemu',
                                     'tools/run-tests.sh '])


def test_ci_run_fails_when_the_test_suite_fails(tmp_path):
    _stub_checkout(tmp_path, {'tools/run-tests.sh': 1})
    rc, calls = _ci_run(tmp_path)
    assert rc != 0 and calls[-1] == 'tools/run-tests.sh '


def test_ci_run_fails_when_the_main_job_fails_and_still_runs_the_suite(
        tmp_path):
    _stub_checkout(tmp_path, {'.venv/bin/tox': 1})
    rc, calls = _ci_run(tmp_path)
    assert rc != 0
    assert calls == ['tools/setup.sh ', '.venv/bin/tox -e direct-qemu',
                     'tools/run-tests.sh ']
