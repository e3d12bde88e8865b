"""The guest images every caller boots, resolved in one place.

Each guest (``sextant``: the Sextant-compatible test guest; ``latency``:
the keypress-latency guest) is found in one order, for the tempest test,
``kerbside-harness``, ``kerbside-latency``, the integration tests, the job
script and the benchmarks:

1. the configured path (``[sextant] image``, ``--image``);
2. the guest's environment variable (``SEXTANT_IMAGE``,
   ``KTP_LATENCY_IMAGE``);
3. the bundled guest, built from the sources that ship inside the package
   (``kerbside_tempest_plugin/guests/``) into a per-user cache directory,
   ``~/.cache/kerbside-tempest-plugin/images/<hash of the sources>/``.

A configured path or variable that names no file is an error, never a
silent fallback. The bundled build needs only Debian packages (gnu-efi,
gcc, binutils, mtools, qemu-utils, python3, console-data) and takes a
second or two; its directory is keyed by the hash of the sources, so an
upgraded plugin never boots a stale guest and two versions can share a
cache. Concurrent callers serialise on a lock file in that directory.

``python -m kerbside_tempest_plugin.guest_images [--bundled] [--rebuild]
GUEST...`` prints each resolved path (building the bundled guest when
needed); tools/ scripts use it.
"""

import argparse
import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import time

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import tools

LOG = logging.getLogger(__name__)

SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'guests')

# guest -> (the image file the build produces, its environment variable)
GUESTS = {
    'sextant': ('sextant.qcow2', 'SEXTANT_IMAGE'),
    'latency': ('latency.qcow2', 'KTP_LATENCY_IMAGE'),
}

BUILD_TOOLS = ('bash', 'gcc', 'ld', 'objcopy', 'mformat', 'mmd', 'mcopy',
               'qemu-img')
BUILD_TIMEOUT = 600


class GuestImageError(errors.HarnessError):
    """No guest image: a configured one is missing, or the build failed."""


def _guest(name):
    if name not in GUESTS:
        raise GuestImageError('unknown guest %r (have: %s)' % (
            name, ', '.join(sorted(GUESTS))))
    return GUESTS[name]


def source_files():
    """Every file of the guest sources, as paths relative to SOURCES."""
    if not os.path.isfile(os.path.join(SOURCES, 'build.sh')):
        raise GuestImageError(
            'the guest sources are missing from the installed package (%s '
            'has no build.sh): reinstall kerbside-tempest-plugin, or set %s'
            % (SOURCES, ' / '.join(v for _, v in GUESTS.values())))
    out = []
    for root, dirs, files in os.walk(SOURCES):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        for f in sorted(files):
            if not f.endswith(('.pyc', '.pyo')):
                out.append(os.path.relpath(os.path.join(root, f), SOURCES))
    return sorted(out)


def sources_hash():
    """sha256 over the names and contents of the guest sources."""
    h = hashlib.sha256()
    for rel in source_files():
        h.update(rel.encode() + b'\0')
        with open(os.path.join(SOURCES, rel), 'rb') as f:
            h.update(f.read())
        h.update(b'\0')
    return h.hexdigest()


def cache_dir():
    """Where the bundled guests of these sources are built.

    $KTP_IMAGES_CACHE, else ~/.cache/kerbside-tempest-plugin/images; then
    the first 16 hex digits of `sources_hash()`.
    """
    root = os.environ.get('KTP_IMAGES_CACHE') or os.path.join(
        tools.cache_dir(), 'images')
    return os.path.join(os.path.abspath(root), sources_hash()[:16])


class _Lock:
    """An exclusive flock on `path`, waited for with a deadline."""

    def __init__(self, path, timeout):
        self.path = path
        self.timeout = timeout
        self.f = None

    def __enter__(self):
        self.f = open(self.path, 'a')
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.f.close()
                    raise GuestImageError(
                        'waited %.0f s for another build of the guest '
                        'images (lock %s still held)'
                        % (self.timeout, self.path))
                time.sleep(0.2)

    def __exit__(self, *exc):
        self.f.close()


def bundled(guest, rebuild=False, log_path=None, timeout=BUILD_TIMEOUT):
    """The bundled `guest`'s image, built into `cache_dir()` when missing
    (or with `rebuild`). `log_path` gets the build output (default
    build.log in the cache directory).
    """
    image_name, _ = _guest(guest)
    out = cache_dir()
    image = os.path.join(out, image_name)
    os.makedirs(out, exist_ok=True)
    with _Lock(os.path.join(out, '.lock'), timeout):
        if os.path.isfile(image) and not rebuild:
            return image
        problems = tools.missing(BUILD_TOOLS)
        if problems:
            raise GuestImageError('cannot build the %s guest: missing tool '
                                  '%s' % (guest, '; missing tool '.join(
                                      str(p) for p in problems)))
        log_path = log_path or os.path.join(out, 'build.log')
        os.makedirs(os.path.dirname(os.path.abspath(log_path)),
                    exist_ok=True)
        env = dict(os.environ, IMAGES_OUT=out)
        if rebuild:
            env['FORCE'] = '1'
        LOG.info('building the %s guest into %s', guest, out)
        t0 = time.monotonic()
        with open(log_path, 'ab') as log:
            try:
                proc = subprocess.run(
                    [tools.find('bash'), os.path.join(SOURCES, 'build.sh'),
                     guest], stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, env=env, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise GuestImageError(
                    'building the %s guest did not finish within %d s; '
                    'build log %s ends:\n%s' % (guest, timeout, log_path,
                                                logtext.tail_file(log_path)))
        if proc.returncode != 0 or not os.path.isfile(image):
            raise GuestImageError(
                'building the %s guest failed (exit %d, %s); build log %s '
                'ends:\n%s' % (guest, proc.returncode,
                               'no %s' % image if proc.returncode == 0
                               else 'no image', log_path,
                               logtext.tail_file(log_path)))
        LOG.info('built %s in %.1f s', image, time.monotonic() - t0)
        return image


def resolve(guest, configured=None, log_dir=None):
    """The image to boot for `guest`: `configured`, else the guest's
    environment variable, else the bundled guest (built when missing).
    `log_dir` receives image-build.log when a build runs.
    """
    _, env_var = _guest(guest)
    for value, what in ((configured, 'the configured image'),
                        (os.environ.get(env_var), env_var)):
        if value:
            path = os.path.abspath(os.path.expanduser(value))
            if not os.path.isfile(path):
                raise GuestImageError('%s %s: no such file' % (what, value))
            LOG.info('%s guest: %s (%s)', guest, path, what)
            return path
    log_path = os.path.join(log_dir, 'image-build.log') if log_dir else None
    path = bundled(guest, log_path=log_path)
    LOG.info('%s guest: %s (bundled)', guest, path)
    return path


def sextant_image(configured=None, log_dir=None):
    """The Sextant guest: `configured`, $SEXTANT_IMAGE, or bundled."""
    return resolve('sextant', configured, log_dir)


def latency_image(configured=None, log_dir=None):
    """The latency guest: `configured`, $KTP_LATENCY_IMAGE, or bundled."""
    return resolve('latency', configured, log_dir)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog='python -m kerbside_tempest_plugin.guest_images',
        description='Print the guest images to boot (configured by '
                    'SEXTANT_IMAGE / KTP_LATENCY_IMAGE, else the bundled '
                    'guests, built into a per-user cache when missing).')
    p.add_argument('guests', nargs='*', metavar='GUEST',
                   help='sextant and/or latency (default: both)')
    p.add_argument('--bundled', action='store_true',
                   help='the bundled guests, whatever the variables say')
    p.add_argument('--rebuild', action='store_true',
                   help='rebuild the bundled guests even when built')
    args = p.parse_args(argv)
    try:
        for g in args.guests or sorted(GUESTS):
            if args.bundled or args.rebuild:
                print(bundled(g, rebuild=args.rebuild))
            else:
                print(resolve(g))
    except errors.HarnessError as e:
        print('guest_images: %s' % e, file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
