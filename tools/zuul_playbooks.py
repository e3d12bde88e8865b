#!/usr/bin/env python3
"""Run the Zuul jobs' playbooks with ansible-playbook against localhost.

The playbooks under playbooks/ are plain Ansible; this runs them the way a
Zuul executor would, with connection local instead of ssh to a node and
with the variables Zuul passes (zuul.project.src_dir, zuul.executor.log_root,
ansible_user_dir, ...), in a scratch work root:

    <root>/home                      ansible_user_dir (the node's home)
    <root>/home/src/<host>/<project> zuul.project.src_dir -> this checkout
    <root>/logs                      zuul.executor.log_root

Steps (any combination; with none, the three cheap ones):

  --syntax-check  ansible-playbook --syntax-check of every playbook the
                  jobs in .zuul.yaml name.
  --post-check    run every post-run playbook for real against a fake
                  artifact tree on the "node", and check that it arrives
                  byte for byte under log_root; run it again with no
                  artifact directory and check that it passes and
                  collects nothing. Cheap: no job is run.
  --run-check     run every run playbook for real on a checkout whose
                  tools/setup.sh, .venv/bin/tox and tools/run-tests.sh
                  only record how they were called: the README's commands
                  run in order, in src_dir, as root, with KTP_ARTIFACTS
                  where post-run looks, and a failing setup.sh fails the
                  playbook before tox starts. Cheap: the real commands
                  are CI's own steps.
  --job NAME      run that job's pre-run, run and post-run playbooks for
                  real (the direct-qemu job runs the main job, which takes
                  minutes); repeatable. --all-jobs runs every job. Each
                  job's work root (and the logs/ its post-run fills) is
                  kept under artifacts/zuul-playbooks-<time>/<job>.

synchronize comes from the ansible.posix collection, which ansible-core
does not ship and Ansible Galaxy cannot be reached from here: it is taken
from the ``ansible`` package on PyPI (only that collection's files) into
~/.cache/kerbside-tempest-plugin/ansible-collections once.
"""

import argparse
import filecmp
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_zuul  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The Ansible bundle whose ansible.posix collection matches the
# ansible-core that test-requirements.txt resolves to on Python 3.11.
ANSIBLE_BUNDLE = 'ansible==12.3.0'
COLLECTIONS = os.environ.get('KTP_ANSIBLE_COLLECTIONS') or os.path.join(
    os.path.expanduser('~'), '.cache', 'kerbside-tempest-plugin',
    'ansible-collections')
PROJECT_HOST = 'example.org'
PROJECT = 'kerbside-tempest-plugin'
SYNTAX_TIMEOUT = 120
POST_TIMEOUT = 300
# What each run playbook must run, in order: the README's commands (its
# two opening ones and the OpenStack job's; README.md is checked to still
# spell them this way).
JOB_COMMANDS = {
    'playbooks/direct-qemu/run.yaml':
        './tools/setup.sh && .venv/bin/tox -e direct-qemu',
    'playbooks/openstack/run.yaml':
        './tools/setup.sh && .venv/bin/tox -e openstack',
    'playbooks/unit/run.yaml': './tools/run-tests.sh',
}
# Stand-ins for those commands, used only by --run-check to see how the
# playbook calls them (the commands themselves are CI's own steps).
RECORDER = '''#!/bin/sh
printf '%s|%s|%s|%s\\n' "$0 $*" "$(pwd -P)" "${KTP_ARTIFACTS-unset}" \\
    "$(id -u)" >> @RECORD@
exit @EXIT@
'''
FAKE_ARTIFACTS = {
    'report.json': b'{"passed": 8, "failed": 0}\n',
    'screens/qr-0001.png': bytes(range(256)) * 4,
    'logs/kerbside-proxy.log': b'proxy log line\n' * 100,
    'logs/serial/guest.log': b'SEXTANT READY\n',
}


class PlaybookError(Exception):
    """A playbook run failed or did not do what it should."""


def log(msg):
    print('[zuul-playbooks %s] %s' % (time.strftime('%H:%M:%S'), msg),
          flush=True)


def ansible_playbook():
    here = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')
    found = here if os.path.exists(here) else shutil.which('ansible-playbook')
    if not found:
        raise PlaybookError(
            'ansible-playbook not found: pip install ansible-core '
            '(test-requirements.txt; tools/setup.sh installs it into .venv)')
    return found


def ensure_posix_collection(dest=COLLECTIONS):
    """ansible.posix under dest/ansible_collections, from PyPI's ansible."""
    manifest = os.path.join(dest, 'ansible_collections', 'ansible', 'posix',
                            'MANIFEST.json')
    if os.path.exists(manifest):
        return dest
    log('fetching ansible.posix from the %s wheel (once)' % ANSIBLE_BUNDLE)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, '-m', 'pip', 'download', '-q', '--no-deps',
               '--only-binary', ':all:', '-d', tmp, ANSIBLE_BUNDLE]
        try:
            proc = subprocess.run(cmd, timeout=600, text=True,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        except (subprocess.SubprocessError, OSError) as e:
            raise PlaybookError('cannot fetch %s for ansible.posix: %s'
                                % (ANSIBLE_BUNDLE, e))
        if proc.returncode != 0:
            raise PlaybookError('cannot fetch %s for ansible.posix (pip '
                                'exit %d):\n%s' % (ANSIBLE_BUNDLE,
                                                   proc.returncode,
                                                   proc.stdout[-2000:]))
        wheels = [f for f in os.listdir(tmp) if f.endswith('.whl')]
        if not wheels:
            raise PlaybookError('pip download %s left no wheel in %s'
                                % (ANSIBLE_BUNDLE, tmp))
        prefix = 'ansible_collections/ansible/posix/'
        # Extract beside dest and rename into place, so that a concurrent
        # run (pytest and lint-ci.sh) never sees half a collection.
        parent = os.path.dirname(os.path.abspath(dest))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix='.posix-', dir=parent)
        try:
            with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as whl:
                members = [m for m in whl.namelist() if m.startswith(prefix)]
                if not members:
                    raise PlaybookError('%s holds no %s'
                                        % (wheels[0], prefix))
                whl.extractall(staging, members)
            if not os.path.exists(manifest):
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log('ansible.posix ready in %s (%.1f s)' % (dest, time.monotonic() - t0))
    return dest


class WorkRoot(object):
    """A scratch executor work root and node home, with Zuul's variables."""

    def __init__(self, base, checkout_from=ROOT, facts=None):
        self.base = base
        self.facts = facts or os.path.join(base, 'facts')
        self.home = os.path.join(base, 'home')
        self.logs = os.path.join(base, 'logs')
        self.src_dir = os.path.join('src', PROJECT_HOST, PROJECT)
        self.artifacts = os.path.join(self.home, 'kerbside-artifacts')
        checkout = os.path.join(self.home, self.src_dir)
        os.makedirs(os.path.dirname(checkout))
        os.makedirs(self.logs)
        os.symlink(checkout_from, checkout)
        self.inventory = os.path.join(base, 'inventory.yaml')
        self.vars_file = os.path.join(base, 'zuul-vars.json')
        with open(self.inventory, 'w') as f:
            json.dump({'all': {'hosts': {'debian-bookworm': {
                'ansible_connection': 'local',
                'ansible_python_interpreter': sys.executable}}}}, f)
        with open(self.vars_file, 'w') as f:
            json.dump(self.zuul_vars(), f, indent=2)

    def zuul_vars(self):
        return {
            'ansible_user_dir': self.home,
            'zuul': {
                'project': {
                    'name': 'kerbside/%s' % PROJECT,
                    'short_name': PROJECT,
                    'canonical_hostname': PROJECT_HOST,
                    'canonical_name': '%s/kerbside/%s' % (PROJECT_HOST,
                                                          PROJECT),
                    'src_dir': self.src_dir,
                },
                'executor': {
                    'hostname': 'localhost',
                    'log_root': self.logs,
                    'work_root': self.base,
                    'src_root': os.path.join(self.base, 'src'),
                },
                'job': '', 'pipeline': 'check', 'branch': 'master',
                'build': 'offline-check', 'attempts': 1,
            },
        }

    def env(self):
        env = dict(os.environ)
        env.update({
            'ANSIBLE_COLLECTIONS_PATH': COLLECTIONS,
            'ANSIBLE_HOME': os.path.join(self.base, 'ansible-home'),
            'ANSIBLE_LOCAL_TEMP': os.path.join(self.base, 'ansible-tmp'),
            'ANSIBLE_RETRY_FILES_ENABLED': 'false',
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_STDOUT_CALLBACK': 'default',
            # Gather the node's facts once per check, as Zuul caches them.
            'ANSIBLE_GATHERING': 'smart',
            'ANSIBLE_CACHE_PLUGIN': 'jsonfile',
            'ANSIBLE_CACHE_PLUGIN_CONNECTION': self.facts,
        })
        return env

    def playbook(self, path, job, timeout, extra=(), stream=False):
        """Run one playbook; (output, seconds). stream: to our stdout."""
        cmd = [ansible_playbook(), '-i', self.inventory,
               '-e', '@' + self.vars_file,
               '-e', json.dumps({'zuul': dict(self.zuul_vars()['zuul'],
                                              job=job)})]
        if shutil.which('sudo') is None and os.geteuid() == 0:
            # A Zuul node has sudo; a bare Debian container running as
            # root may not, and su from root to root needs no password.
            cmd += ['-e', 'ansible_become_method=su']
        cmd += list(extra) + [os.path.join(ROOT, path)]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, env=self.env(), cwd=self.base, timeout=timeout,
                stdin=subprocess.DEVNULL, text=True,
                stdout=None if stream else subprocess.PIPE,
                stderr=None if stream else subprocess.STDOUT)
        except subprocess.TimeoutExpired as e:
            tail = (e.output or '')[-2000:]
            raise PlaybookError('%s (job %s) still running after %d s; '
                                'last output:\n%s' % (path, job, timeout,
                                                      tail))
        took = time.monotonic() - t0
        out = proc.stdout or ''
        if proc.returncode != 0:
            raise PlaybookError('%s (job %s) failed, exit %d after %.1f s:\n%s'
                                % (path, job, proc.returncode, took,
                                   out[-4000:] or '(output above)'))
        return out, took


def job_playbooks(zuul_file):
    """[(job name, attr, playbook path)] in the order Zuul runs them."""
    found = []
    for name, job in check_zuul.jobs(check_zuul.load(zuul_file)).items():
        for attr in ('pre-run', 'run', 'post-run', 'cleanup-run'):
            for path in check_zuul.playbook_names(job, attr):
                found.append((name, attr, path))
    return found


def syntax_check(work, playbooks):
    for job, attr, path in playbooks:
        _, took = work.playbook(path, job, SYNTAX_TIMEOUT,
                                extra=['--syntax-check'])
        log('syntax ok: %s (%s of %s, %.1f s)' % (path, attr, job, took))


def _tree(top):
    out = {}
    for dirpath, _, files in os.walk(top):
        for name in files:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, top)] = full
    return out


def post_check(work, playbooks):
    """Run each post-run playbook on a fake artifact tree and on none."""
    posts = [(job, path) for job, attr, path in playbooks
             if attr == 'post-run']
    for job, path in posts:
        shutil.rmtree(work.artifacts, ignore_errors=True)
        shutil.rmtree(os.path.join(work.logs, 'kerbside-artifacts'),
                      ignore_errors=True)
        for rel, data in FAKE_ARTIFACTS.items():
            full = os.path.join(work.artifacts, rel)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, 'wb') as f:
                f.write(data)
        _, took = work.playbook(path, job, POST_TIMEOUT)
        collected = os.path.join(work.logs, 'kerbside-artifacts')
        got = _tree(collected)
        if sorted(got) != sorted(FAKE_ARTIFACTS):
            raise PlaybookError(
                '%s (job %s) collected %s into %s, expected %s'
                % (path, job, sorted(got) or 'nothing', collected,
                   sorted(FAKE_ARTIFACTS)))
        for rel in got:
            if not filecmp.cmp(got[rel], os.path.join(work.artifacts, rel),
                               shallow=False):
                raise PlaybookError('%s (job %s): %s differs after '
                                    'collection' % (path, job, rel))
        log('post ok: %s collected %d artifacts byte for byte (%.1f s)'
            % (path, len(got), took))

        shutil.rmtree(work.artifacts)
        shutil.rmtree(collected)
        out, took = work.playbook(path, job, POST_TIMEOUT)
        if os.path.exists(collected):
            raise PlaybookError('%s (job %s) made %s with no artifacts on '
                                'the node' % (path, job, collected))
        if 'no %s' % work.artifacts not in out:
            raise PlaybookError('%s (job %s) did not say that the node had '
                                'no artifacts:\n%s' % (path, job, out[-2000:]))
        log('post ok: %s with no artifacts passes and says so (%.1f s)'
            % (path, took))
    if not posts:
        log('no post-run playbooks to check')


def _fake_checkout(top, record, failing=None):
    """A checkout whose job commands record how they were called."""
    for rel in ('tools/setup.sh', 'tools/run-tests.sh', '.venv/bin/tox'):
        full = os.path.join(top, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, 'w') as f:
            f.write(RECORDER.replace('@RECORD@', shlex.quote(record))
                    .replace('@EXIT@', '1' if rel == failing else '0'))
        os.chmod(full, 0o755)


def _recorded(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.rstrip('\n').split('|') for line in f]


def run_check(base, playbooks, commands=None):
    """Run each run playbook for real on a checkout of recorders.

    Shows that the playbook runs the README's commands, in order, in
    zuul.project.src_dir under ansible_user_dir, with become and with
    KTP_ARTIFACTS where the post-run playbook looks, and that a failing
    first command fails the playbook before the second runs.
    """
    commands = JOB_COMMANDS if commands is None else commands
    with open(os.path.join(ROOT, 'README.md')) as f:
        readme = f.read().splitlines()
    runs = [(job, path) for job, attr, path in playbooks if attr == 'run']
    collecting = {job for job, attr, _ in playbooks if attr == 'post-run'}
    for job, path in runs:
        if path not in commands:
            raise PlaybookError('%s (job %s): no expected commands in '
                                'JOB_COMMANDS' % (path, job))
        line = commands[path]
        if line not in readme:
            raise PlaybookError('README.md no longer has the line %r that '
                                '%s runs' % (line, path))
        expected = [c.strip() for c in line.split('&&')]
        for failing in (None, expected[0].split()[0].lstrip('./')):
            sub = tempfile.mkdtemp(prefix='run-', dir=base)
            fake = os.path.join(sub, 'checkout')
            record = os.path.join(sub, 'record')
            _fake_checkout(fake, record,
                           failing if len(expected) > 1 else None)
            work = WorkRoot(os.path.join(sub, 'root'), checkout_from=fake,
                            facts=os.path.join(base, 'facts'))
            try:
                work.playbook(path, job, POST_TIMEOUT)
                ok = True
            except PlaybookError as e:
                ok, err = False, e
            calls = _recorded(record)
            ran = [c[0].replace(fake + '/', './').replace(
                './.venv', '.venv').strip() for c in calls]
            if failing is None or len(expected) == 1:
                if not ok:
                    raise err
                if ran != expected:
                    raise PlaybookError('%s (job %s) ran %s, expected %s'
                                        % (path, job, ran, expected))
                for argv, cwd, artifacts, uid in calls:
                    if cwd != os.path.realpath(fake):
                        raise PlaybookError('%s ran %s in %s, not in the '
                                            'checkout' % (path, argv, cwd))
                    if uid != '0':
                        raise PlaybookError('%s ran %s as uid %s, not '
                                            'root' % (path, argv, uid))
                # A job with a post-run playbook must leave its artifacts
                # where that playbook collects them; any job that sets
                # KTP_ARTIFACTS must point it there.
                wanted = {work.artifacts} if job in collecting \
                    else {work.artifacts, 'unset'}
                if calls[0][2] not in wanted:
                    raise PlaybookError('%s set KTP_ARTIFACTS=%s, the post '
                                        'playbook reads %s' % (
                                            path, calls[0][2],
                                            work.artifacts))
                log('run ok: %s ran %s in src_dir as root' % (path, ran))
                if len(expected) == 1:
                    break
            else:
                if ok:
                    raise PlaybookError('%s (job %s) passed although %s '
                                        'failed' % (path, job, expected[0]))
                if ran != expected[:1]:
                    raise PlaybookError('%s (job %s) ran %s after %s '
                                        'failed' % (path, job, ran,
                                                    expected[0]))
                log('run ok: %s stops when %s fails' % (path, expected[0]))


def run_jobs(keep_under, playbooks, names, timeouts):
    """Run each job's playbooks for real, in Zuul's order and semantics.

    Each job gets its own work root under keep_under, which is kept: its
    logs/ is what Zuul would publish. As in Zuul, a failed pre-run or run
    playbook skips the rest of pre-run/run but post-run still runs, and
    the job fails.
    """
    for name in names:
        if not any(job == name for job, _, _ in playbooks):
            raise PlaybookError('no job %s in .zuul.yaml' % name)
    for name in names:
        work = WorkRoot(os.path.join(keep_under, name))
        failure = None
        for job, attr, path in playbooks:
            if job != name or (failure and attr in ('pre-run', 'run')):
                continue
            log('running %s of %s: %s (deadline %d s)'
                % (attr, name, path, timeouts[name]))
            try:
                _, took = work.playbook(path, name, timeouts[name],
                                        stream=True)
            except PlaybookError as e:
                log('%s of %s FAILED: %s' % (attr, name, e))
                failure = failure or e
                continue
            log('%s of %s passed (%.1f s)' % (attr, name, took))
        log('job %s: work root and logs kept in %s' % (name, work.base))
        if failure:
            raise failure


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--zuul-file', default=os.path.join(ROOT,
                                                            '.zuul.yaml'))
    parser.add_argument('--syntax-check', action='store_true')
    parser.add_argument('--post-check', action='store_true')
    parser.add_argument('--run-check', action='store_true')
    parser.add_argument('--job', action='append', default=[])
    parser.add_argument('--all-jobs', action='store_true')
    parser.add_argument('--keep', action='store_true',
                        help='keep the scratch work root')
    args = parser.parse_args(argv)
    if not (args.syntax_check or args.post_check or args.run_check
            or args.job or args.all_jobs):
        args.syntax_check = args.post_check = args.run_check = True
    t0 = time.monotonic()
    base = tempfile.mkdtemp(prefix='ktp-zuul-playbooks-')
    try:
        data = check_zuul.load(args.zuul_file)
        playbooks = job_playbooks(args.zuul_file)
        ensure_posix_collection()
        work = WorkRoot(base)
        if args.syntax_check:
            syntax_check(work, playbooks)
        if args.post_check:
            post_check(work, playbooks)
        if args.run_check:
            run_check(base, playbooks)
        names = list(args.job)
        if args.all_jobs:
            names += [n for n in check_zuul.jobs(data) if n not in names]
        if names:
            timeouts = {n: int(j.get('timeout', 3600))
                        for n, j in check_zuul.jobs(data).items()}
            keep = os.path.join(ROOT, 'artifacts', 'zuul-playbooks-%s'
                                % time.strftime('%Y%m%d-%H%M%S'))
            run_jobs(keep, playbooks, names, timeouts)
    except (PlaybookError, check_zuul.ZuulConfigError) as e:
        print('zuul-playbooks: FAILED: %s' % e, file=sys.stderr)
        return 1
    finally:
        if args.keep:
            log('work root kept: %s' % base)
        else:
            shutil.rmtree(base, ignore_errors=True)
    log('all done (%.1f s)' % (time.monotonic() - t0))
    return 0


if __name__ == '__main__':
    sys.exit(main())
