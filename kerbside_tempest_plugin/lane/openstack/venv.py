"""The OpenStack venv: every service of the cloud, pinned, in a venv of
its own (never the project venv or tempest's).
"""

import os
import subprocess
import sys

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext

REQUIREMENTS = (
    'nova==34.0.0',
    'keystone==30.0.0',
    'openstack-placement==16.0.0',
    'glance==33.0.0',
    # Nova's server views list every server's ports (security groups):
    # a Neutron API must answer even for servers booted with networks none.
    'neutron==29.0.0',
    'libvirt-python',
    'gunicorn',
    'PyMySQL',
    'python-memcached',
    'pymemcache',
)
# What `check()` imports to call the venv usable.
PROBE = ('import nova, keystone, placement, glance, neutron, libvirt, '
         'gunicorn, pymysql')
SCRIPTS = ('gunicorn', 'keystone-manage', 'nova-manage', 'nova-compute',
           'nova-conductor', 'nova-scheduler', 'placement-manage',
           'glance-manage', 'neutron-db-manage', 'privsep-helper')


def default_path():
    return os.environ.get('KTP_OPENSTACK_VENV') or os.path.join(
        os.path.expanduser('~'), '.cache', 'kerbside-tempest-plugin',
        'openstack-venv')


class OpenStackVenv:

    def __init__(self, path=None):
        self.path = os.path.abspath(path or default_path())

    def bin(self, name):
        return os.path.join(self.path, 'bin', name)

    def check(self):
        """Problems that make the venv unusable (empty list: usable)."""
        problems = []
        python = self.bin('python')
        if not os.path.exists(python):
            return ['no venv at %s' % self.path]
        missing = [s for s in SCRIPTS if not os.path.exists(self.bin(s))]
        if missing:
            problems.append('missing scripts: %s' % ', '.join(missing))
        proc = subprocess.run([python, '-c', PROBE], capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            problems.append('imports fail: %s' % logtext.tail_text(
                proc.stderr, 3))
        return problems

    def ensure(self, log_path, python=None):
        """Create the venv and install REQUIREMENTS when `check()` finds
        a problem. Returns a line saying what was done.
        """
        problems = self.check()
        if not problems:
            return 'OpenStack venv %s is usable' % self.path
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(log_path, 'ab') as log:
            if not os.path.exists(self.bin('python')):
                subprocess.run([python or sys.executable, '-m', 'venv',
                                self.path], stdout=log,
                               stderr=subprocess.STDOUT, check=True,
                               timeout=300)
            proc = subprocess.run(
                [self.bin('pip'), 'install'] + list(REQUIREMENTS),
                stdout=log, stderr=subprocess.STDOUT, timeout=3600)
        if proc.returncode != 0:
            raise errors.HarnessError(
                'pip install into %s failed (exit %d); tail of %s:\n%s' % (
                    self.path, proc.returncode, log_path,
                    logtext.tail_file(log_path)))
        problems = self.check()
        if problems:
            raise errors.HarnessError('the OpenStack venv %s is still not '
                                      'usable: %s' % (self.path,
                                                      '; '.join(problems)))
        return 'installed %s into %s' % (' '.join(REQUIREMENTS), self.path)
