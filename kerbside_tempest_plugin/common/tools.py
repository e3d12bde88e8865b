"""Where the harness finds the programs it runs: one lookup for everyone.

The console scripts, the tox envs, the plugin inside somebody else's
tempest venv and the tools/ scripts (through ``python -m
kerbside_tempest_plugin.common.tools NAME...``) all find a tool the same
way, in this order:

1. an explicit override: a path (anything with a slash) given by the
   caller (``[kerbside] ryll_binary``, ``--ryll``, ``[direct_qemu]
   qemu_binary``) or the tool's environment variable (``RYLL_BINARY``);
   an override that is not executable is an error, never skipped;
2. the scripts directory of the running interpreter's environment (where
   pip put ryll and tempest): ``sysconfig.get_path('scripts')`` and the
   directory of ``sys.executable``, which need not be on PATH;
3. PATH;
4. /usr/sbin and /sbin (mariadbd is there, and a login shell of a
   non-root user does not have them on PATH).

Kerbside's programs (kerbside, kerbside-proxy, gunicorn) come only from
the Kerbside venv (``lane.kerbside.KerbsideVenv``): another gunicorn on
PATH would not import kerbside.

A missing tool raises ToolNotFound: one line naming the tool, where it
was looked for, the package that provides it and the command that
installs it.
"""

import os
import shutil
import sys
import sysconfig

from kerbside_tempest_plugin.common import errors

SYSTEM_SBIN = ('/usr/sbin', '/sbin')

# name -> (what provides it, the command that installs it). {pip} is the
# running interpreter's pip.
_APT = 'apt-get install -y %s'
PROVIDERS = {
    'ryll': ('PyPI package ryll==0.3.0', '{pip} install ryll==0.3.0'),
    'tempest': ('PyPI package tempest', '{pip} install tempest'),
    'stestr': ('PyPI package stestr', '{pip} install stestr'),
    'kerbside': ('the Kerbside venv (PyPI kerbside==0.8.0)',
                 'kerbside-harness setup'),
    'kerbside-proxy': ('the Kerbside venv (PyPI kerbside-proxy)',
                       'kerbside-harness setup'),
    'gunicorn': ('the Kerbside venv (PyPI gunicorn)',
                 'kerbside-harness setup'),
    'qemu-system-x86_64': ('Debian package qemu-system-x86',
                           _APT % 'qemu-system-x86'),
    'qemu-img': ('Debian package qemu-utils', _APT % 'qemu-utils'),
    'mariadbd': ('Debian package mariadb-server', _APT % 'mariadb-server'),
    'mariadb-install-db': ('Debian package mariadb-server',
                           _APT % 'mariadb-server'),
    'mariadb': ('Debian package mariadb-client', _APT % 'mariadb-client'),
    'mariadb-admin': ('Debian package mariadb-client',
                      _APT % 'mariadb-client'),
    'openssl': ('Debian package openssl', _APT % 'openssl'),
    'gcc': ('Debian package gcc', _APT % 'gcc'),
    'ld': ('Debian package binutils', _APT % 'binutils'),
    'objcopy': ('Debian package binutils', _APT % 'binutils'),
    'mformat': ('Debian package mtools', _APT % 'mtools'),
    'mmd': ('Debian package mtools', _APT % 'mtools'),
    'mcopy': ('Debian package mtools', _APT % 'mtools'),
    'mkfs.fat': ('Debian package dosfstools', _APT % 'dosfstools'),
    'bash': ('Debian package bash', _APT % 'bash'),
}

# The environment variable that overrides a tool, where there is one.
ENV_OVERRIDES = {'ryll': 'RYLL_BINARY'}

KERBSIDE_TOOLS = ('kerbside', 'kerbside-proxy', 'gunicorn')


class ToolNotFound(errors.HarnessError):
    """A program the harness needs is not installed (or not executable)."""

    def __init__(self, name, looked_in, reason=None):
        self.name = name
        self.looked_in = list(looked_in)
        provider, command = install_hint(name)
        self.provider = provider
        self.command = command
        where = reason or 'not found in %s' % ', '.join(self.looked_in)
        super().__init__('%s: %s; it comes from %s: run `%s`' % (
            name, where, provider, command))


def install_hint(name):
    """(what provides `name`, the command that installs it)."""
    provider, command = PROVIDERS.get(
        name, ('a package that provides %s' % name,
               'apt-get install the package that provides %s' % name))
    pip = '%s -m pip' % sys.executable
    return provider, command.format(pip=pip)


def cache_dir():
    """The per-user cache of the plugin: $XDG_CACHE_HOME or ~/.cache, then
    kerbside-tempest-plugin (the Kerbside venv, the built guests).
    """
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser(
        '~/.cache')
    return os.path.join(cache, 'kerbside-tempest-plugin')


def default_kerbside_venv():
    """$KERBSIDE_VENV, else the kerbside-venv in `cache_dir()`."""
    env = os.environ.get('KERBSIDE_VENV')
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(cache_dir(), 'kerbside-venv')


def interpreter_bin_dirs():
    """The scripts directories of the running interpreter's environment."""
    dirs = []
    for d in (sysconfig.get_path('scripts'),
              os.path.dirname(sys.executable)):
        if d and d not in dirs:
            dirs.append(d)
    return dirs


def search_dirs(name, venv=None):
    """The directories `find` looks in for a bare `name`, in order.

    PATH is the entry 'PATH' (expanded by `find`); `venv` is the Kerbside
    venv for Kerbside's programs.
    """
    if name in KERBSIDE_TOOLS:
        return [os.path.join(venv or default_kerbside_venv(), 'bin')]
    return interpreter_bin_dirs() + ['PATH'] + list(SYSTEM_SBIN)


def _executable(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find(name, override=None, venv=None):
    """The absolute path of tool `name`, or raise ToolNotFound.

    `override`: what the caller was configured with: a path is used as
    given (it must be executable); a bare name other than `name` is looked
    up instead of it. None or `name` itself means no override, and then
    the tool's environment variable (ENV_OVERRIDES) is one.
    """
    if override in (None, '', name):
        override = os.environ.get(ENV_OVERRIDES.get(name, ''), '') or None
    if override and os.sep in override:
        path = os.path.abspath(os.path.expanduser(override))
        if not _executable(path):
            raise ToolNotFound(name, [path], reason='%s is not an executable '
                               'file (configured override)' % path)
        return path
    bare = override or name
    looked = []
    for d in search_dirs(name, venv=venv):
        if d == 'PATH':
            looked.append('PATH')
            found = shutil.which(bare)
            if found:
                return os.path.abspath(found)
            continue
        looked.append(d)
        path = os.path.join(d, bare)
        if _executable(path):
            return path
    raise ToolNotFound(bare if bare != name else name, looked)


def find_any(*names, venv=None):
    """The first of several alternative names that exists (mariadbd, then
    mysqld); the error names the first.
    """
    first = None
    for name in names:
        try:
            return find(name, venv=venv)
        except ToolNotFound as e:
            first = first or e
    raise first


def missing(names, venv=None):
    """The ToolNotFound of each of `names` that cannot be found."""
    out = []
    for name in names:
        try:
            find(name, venv=venv)
        except ToolNotFound as e:
            out.append(e)
    return out


def main(argv=None):
    """``python -m kerbside_tempest_plugin.common.tools NAME...``: print
    each tool's path, one a line; exit 1 with one line per missing tool.
    """
    names = sys.argv[1:] if argv is None else argv
    if not names:
        print('usage: python -m kerbside_tempest_plugin.common.tools '
              'NAME...', file=sys.stderr)
        return 2
    status = 0
    for name in names:
        try:
            print(find(name))
        except ToolNotFound as e:
            print('missing tool %s' % e, file=sys.stderr)
            status = 1
    return status


if __name__ == '__main__':
    sys.exit(main())
