"""Kerbside with one promise broken: a copy of a Kerbside venv whose
installed `kerbside` package has one minimal source edit.

The promise tests (tests/scenario/test_kerbside_promises.py) are judged
by what they catch: each variant here disables exactly one of Kerbside's
promises (sessions, audit, terminate, firewall, tokens), and
benchmarks/broken_promises.py runs the tests against every variant and
against the unmodified venv (docs/plans/broken-promises.md).

This is the only place the project edits Kerbside's code, and it only
ever edits a copy: `make_broken_venv(base, variant, dest)` copies the base
venv to `dest`, points the copy's console scripts (bin/kerbside,
bin/gunicorn, ...) at the copy's own python (their shebangs name the
base's python, so without it the copy would silently run the original
package), applies the variant's edits to the copy's sources, removes
their stale bytecode and checks the result. Every edit names the exact
source text it replaces, which must occur once: a Kerbside release that
moved the code fails loudly (VariantError) instead of making a variant
that breaks nothing.

    python -m kerbside_tempest_plugin.lane.kerbside_variants list
    python -m kerbside_tempest_plugin.lane.kerbside_variants make \\
        VARIANT DEST [--base VENV]

The lane takes the copy like any Kerbside venv (`[kerbside]
kerbside_venv`, or KERBSIDE_VENV for the job scripts).
"""

import argparse
import collections
import difflib
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

from kerbside_tempest_plugin.common import atomic
from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import tools

PROMISES = ('sessions', 'audit', 'terminate', 'firewall', 'tokens')

# What make_broken_venv writes into the copy: the variant, its edits and
# the base it came from.
MARKER = 'ktp-variant.json'

# Linux reads at most 127 bytes of a #! line on older kernels (256 since
# 5.1); a longer interpreter path gets pip's /bin/sh trampoline instead.
SHEBANG_MAX = 127

Edit = collections.namedtuple('Edit', 'path old new')
Edit.__doc__ = """`old` replaced by `new` in `path` (relative to the
kerbside package directory); `old` must occur exactly once."""


class Variant(collections.namedtuple(
        'Variant', 'name promise description edits why')):
    """One broken Kerbside: the promise it breaks (one of PROMISES), a
    one-line description, its edits and why these edits (for the plan).
    """


class VariantError(errors.HarnessError):
    """A variant could not be made: unknown name, the expected source
    text is not in this Kerbside, or the copy does not run its own
    package.
    """


def _tag(name):
    return '# ktp-variant %s' % name


VARIANTS = collections.OrderedDict((v.name, v) for v in [
    Variant(
        'terminate-noop', 'terminate',
        'terminating a session does nothing (the API still answers 200)',
        [Edit('db.py',
              '    remove_session(session_id)\n'
              '    request_session_termination(session_id, reason=reason)\n',
              '    %s: neither the token removed nor\n'
              '    # the termination intent recorded.\n'
              % _tag('terminate-noop'))],
        'db.terminate_session() is what both terminate endpoints call; '
        'it deletes the token, records the termination intent the '
        "daemon's ProxyControl stream pushes to the proxy, then audits. "
        'The first two are removed: both endpoints still answer 200 '
        '(and list the tokens) and the audit trail still says "Session '
        'terminated by request", so only the effect is missing: the '
        'live session stays up and the token stays valid.'),
    Variant(
        'firewall-ignores-list', 'firewall',
        'the firewall policy ignores FIREWALL_PERMITTED_CHANNELS '
        '(every channel permitted)',
        [Edit('rpc/servicer.py',
              '        mode=proto_mode, permitted_channels=permitted)\n',
              '        mode=proto_mode, permitted_channels=[])  %s\n'
              % _tag('firewall-ignores-list'))],
        'build_firewall_policy() turns the config into the FirewallPolicy '
        'of every AuthorizeConnection reply; an empty permitted_channels '
        'is what the proxy reads as "permit all". The list is still '
        'parsed and validated (an unknown name still fails the daemon at '
        'start) and FIREWALL_MODE is still honoured; only the list never '
        'reaches the proxy.'),
    Variant(
        'audit-dropped', 'audit',
        'audit events are never written',
        [Edit('db.py',
              'def add_audit_event(source, uuid, session_id, channel, node, '
              'pid, message):\n',
              'def add_audit_event(source, uuid, session_id, channel, node, '
              'pid, message):\n'
              '    return  %s: nothing is written\n' % _tag('audit-dropped'))],
        'db.add_audit_event() is the one writer of the auditevents table: '
        'the API, the daemon and the proxy (RecordAuditEvent over gRPC) '
        'all call it. It returns at once, so GET .../audit answers 200 '
        'with total 0 and no events; nothing else changes.'),
    Variant(
        'token-never-expires', 'tokens',
        'console tokens never expire (expired ones are still accepted)',
        [Edit('consoletoken.py',
              '            expiry = now + (config.CONSOLE_TOKEN_DURATION '
              '* 60)\n',
              '            expiry = now + 10 * 365 * 24 * 3600  %s\n'
              % _tag('token-never-expires'))],
        'consoletoken.create_token() stamps every console token (proxy '
        '.vv, Nova and Shaken Fist exchanges) with now + '
        'CONSOLE_TOKEN_DURATION minutes; it now stamps ten years. Removing '
        'the expiry filter in db.get_token_by_token() instead would not '
        "do: the daemon's reaper deletes expired unused tokens once a "
        'minute, so an expired token would be refused or accepted '
        'depending on when the reaper last ran. With this edit the '
        'reaper and the authorisation check both see a live token.'),
    Variant(
        'terminate-keeps-tokens', 'tokens',
        "terminate cuts the live session but leaves the console's tokens "
        'usable',
        [Edit('db.py',
              '    remove_session(session_id)\n'
              '    request_session_termination(session_id, reason=reason)\n',
              '    %s: the token is not removed.\n'
              '    request_session_termination(session_id, reason=reason)\n'
              % _tag('terminate-keeps-tokens'))],
        'db.terminate_session() without its first step, deleting the '
        "session's token: the termination intent still cuts the live "
        'session and the audit trail records it, but the .vv fetched '
        'before the terminate still authenticates. The intent row lives '
        '300 s, keyed by session id, so a later connection with the kept '
        'token could be cut again; one made within the 2 s ProxyControl '
        'poll of the cut is not (the stream\'s already-sent set still '
        'holds the id), and stayed up (docs/plans/broken-promises.md). '
        'A test must judge the authorisation (PermissionDenied), not the '
        "new session's lifetime."),
    Variant(
        'sessions-hidden', 'sessions',
        'GET /session lists nothing',
        [Edit('api.py',
              "                    'sessions.html', sessions=db.get_sessions"
              "(),\n",
              "                    'sessions.html', sessions={},  %s\n"
              % _tag('sessions-hidden')),
         Edit('api.py',
              '                json.dumps(db.get_sessions(), indent=4, '
              'sort_keys=True,\n',
              '                json.dumps({}, indent=4, sort_keys=True,  '
              '%s\n' % _tag('sessions-hidden'))],
        'The Sessions resource (GET /session) answers {} (JSON) or an '
        'empty page (HTML) instead of db.get_sessions(); sessions still '
        'exist and everything else that reads them (terminate by session '
        'id, the console detail) still works.'),
])


def variant(name):
    """The Variant called `name`; VariantError names the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise VariantError('unknown Kerbside variant %r; known: %s' % (
            name, ', '.join(VARIANTS))) from None


def package_dir(venv):
    """The installed `kerbside` package directory of `venv`."""
    found = sorted(glob.glob(os.path.join(
        venv, 'lib', 'python3*', 'site-packages', 'kerbside',
        '__init__.py')))
    if len(found) != 1:
        raise VariantError('expected one kerbside package in %s, found %d'
                           % (venv, len(found)))
    return os.path.dirname(found[0])


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def apply_edits(text, edits, path='?'):
    """`text` with every edit applied in order. Each edit's `old` must
    occur exactly once in the text it is applied to (VariantError names
    the file and the first line of the missing text otherwise).
    """
    for e in edits:
        count = text.count(e.old)
        if count != 1:
            raise VariantError(
                '%s: expected the source text %r exactly once, found it %d '
                'times: this Kerbside is not the one the variant was '
                'written for' % (path, e.old.splitlines()[0].strip(), count))
        text = text.replace(e.old, e.new)
    return text


def _by_file(v):
    files = collections.OrderedDict()
    for e in v.edits:
        files.setdefault(e.path, []).append(e)
    return files


def _patched(pkg, v):
    """{relative path: (old text, new text)} for variant `v` on the
    package directory `pkg`; nothing is written.
    """
    out = collections.OrderedDict()
    for rel, edits in _by_file(v).items():
        path = os.path.join(pkg, rel)
        with open(path, encoding='utf-8') as f:
            old = f.read()
        new = apply_edits(old, edits, path)
        try:
            compile(new, path, 'exec')
        except SyntaxError as e:
            raise VariantError('%s: the %s edit does not compile: %s' % (
                path, v.name, e)) from None
        out[rel] = (old, new)
    return out


def _retarget(data, base, dest):
    """`data` (bytes) with the path `base` replaced by `dest` wherever it
    stands as a whole path (followed by /, a quote, space or the end).
    """
    pattern = re.compile(re.escape(os.fsencode(base)) +
                         rb'''(?=[/"'\s]|$)''', re.M)
    return pattern.sub(lambda m: os.fsencode(dest), data)


def _short_shebang(data):
    """A #! line longer than the kernel reads becomes pip's /bin/sh
    trampoline (only for python interpreters).
    """
    first, sep, rest = data.partition(b'\n')
    interp = first[2:].strip()
    if len(first) <= SHEBANG_MAX or b' ' in interp or \
            not os.path.basename(interp).startswith(b'python'):
        return data
    quoted = os.fsencode(shlex.quote(os.fsdecode(interp)))
    return (b"#!/bin/sh\n'''exec' " + quoted + b' "$0" "$@"\n'
            b"' '''\n" + rest)


def script_interpreter(path):
    """The interpreter a console script runs: its #! line, or the exec
    line of a /bin/sh trampoline; None for binaries and symlinks.
    """
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    with open(path, 'rb') as f:
        head = f.read(1024)
    if not head.startswith(b'#!') or b'\0' in head:
        return None
    lines = head.split(b'\n')
    interp = lines[0][2:].strip()
    if interp == b'/bin/sh' and len(lines) > 1 and \
            lines[1].startswith(b"'''exec' "):
        words = shlex.split(os.fsdecode(lines[1][len(b"'''exec' "):]))
        return words[0] if words else None
    return os.fsdecode(interp.split()[0]) if interp else None


def retarget_scripts(base, dest):
    """Point the text files of `dest`/bin (console scripts' shebangs,
    activate's VIRTUAL_ENV) at `dest` instead of `base`, and absolute
    symlinks into `base` at `dest`. Returns the names changed.
    """
    bindir = os.path.join(dest, 'bin')
    changed = []
    for name in sorted(os.listdir(bindir)):
        path = os.path.join(bindir, name)
        if os.path.islink(path):
            target = os.readlink(path)
            if target == base or target.startswith(base + os.sep):
                os.unlink(path)
                os.symlink(dest + target[len(base):], path)
                changed.append(name)
            continue
        if not os.path.isfile(path):
            continue
        with open(path, 'rb') as f:
            data = f.read()
        if b'\0' in data[:4096]:
            continue            # a binary (kerbside-proxy)
        new = _retarget(data, base, dest)
        if new.startswith(b'#!'):
            new = _short_shebang(new)
        if new != data:
            mode = os.stat(path).st_mode & 0o7777
            with open(path, 'wb') as f:
                f.write(new)
            os.chmod(path, mode)
            changed.append(name)
    return changed


def remove_bytecode(source):
    """Remove the cached bytecode of the module file `source`; returns
    the files removed.
    """
    stem = os.path.splitext(os.path.basename(source))[0]
    removed = []
    for pyc in glob.glob(os.path.join(os.path.dirname(source), '__pycache__',
                                      stem + '.*.pyc')):
        os.unlink(pyc)
        removed.append(pyc)
    return removed


def _inside(path, root):
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root + os.sep)


def check_copy(dest, timeout=120):
    """Problems (a list of strings; empty when fine) with the venv copy
    `dest`: its python must import the kerbside package inside `dest`,
    and every console script in bin/ must run a python of `dest`/bin.
    """
    problems = []
    bindir = os.path.join(dest, 'bin')
    for name in sorted(os.listdir(bindir)):
        interp = script_interpreter(os.path.join(bindir, name))
        if interp and os.path.basename(interp).startswith('python') and \
                not os.path.abspath(interp).startswith(bindir + os.sep):
            problems.append('bin/%s runs %s, not the copy\'s python' % (
                name, interp))
    try:
        proc = subprocess.run(
            [os.path.join(bindir, 'python'), '-c',
             'import kerbside; print("KTP-KERBSIDE", kerbside.__file__)'],
            capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return problems + ['%s/bin/python did not run: %s' % (dest, e)]
    paths = [ln.split(' ', 1)[1] for ln in proc.stdout.splitlines()
             if ln.startswith('KTP-KERBSIDE ')]
    if proc.returncode != 0 or not paths:
        problems.append('%s/bin/python cannot import kerbside (exit %d): %s'
                        % (dest, proc.returncode, proc.stderr.strip()[-300:]))
    elif not _inside(paths[-1], dest):
        problems.append('%s/bin/python imports kerbside from %s, outside '
                        'the copy' % (dest, paths[-1]))
    return problems


def make_broken_venv(base_venv, variant_name, dest):
    """Copy the Kerbside venv `base_venv` to `dest` (which must not exist)
    with `variant_name`'s edits applied to the copy's kerbside package.

    The base is only read: the patched files' sha256 in the base is
    checked before and after. Every edit is checked against the base's
    sources before anything is copied. Returns a dict (also written to
    `dest`/ktp-variant.json): variant, promise, description, base, dest,
    files ({relative path: {before, after}} sha256), diff (unified),
    scripts (bin/ entries retargeted), bytecode_removed.
    """
    v = variant(variant_name)
    base = os.path.abspath(base_venv)
    dest = os.path.abspath(dest)
    if _inside(dest, base) or _inside(base, dest):
        raise VariantError('the copy %s and the base %s must not contain '
                           'each other' % (dest, base))
    if os.path.lexists(dest):
        raise VariantError('%s already exists; a variant is made into a '
                           'new directory' % dest)
    if describe(base):
        raise VariantError('%s is itself a variant copy (%s); make '
                           'variants from an unmodified venv' % (
                               base, describe(base)['variant']))
    base_pkg = package_dir(base)
    patched = _patched(base_pkg, v)     # fails before any copy
    before = {rel: sha256(os.path.join(base_pkg, rel)) for rel in patched}
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        shutil.copytree(base, dest, symlinks=True)
        scripts = retarget_scripts(base, dest)
        pkg = os.path.join(dest, os.path.relpath(base_pkg, base))
        files, diff, removed = {}, [], []
        for rel, (old, new) in patched.items():
            path = os.path.join(pkg, rel)
            mode = os.stat(path).st_mode & 0o7777
            # A new file (tmp + rename), never a write into the copied one.
            atomic.write_text(path, new, mode=mode)
            removed += remove_bytecode(path)
            files[rel] = {'before': before[rel], 'after': sha256(path)}
            diff += difflib.unified_diff(
                old.splitlines(True), new.splitlines(True),
                'a/kerbside/' + rel, 'b/kerbside/' + rel)
        after = {rel: sha256(os.path.join(base_pkg, rel)) for rel in patched}
        if after != before:
            raise VariantError('the base venv %s changed while the %s copy '
                               'was made' % (base, v.name))
        problems = check_copy(dest)
        if problems:
            raise VariantError('the %s copy is not usable: %s' % (
                v.name, '; '.join(problems)))
        info = {'variant': v.name, 'promise': v.promise,
                'description': v.description, 'base': base, 'dest': dest,
                'files': files, 'diff': ''.join(diff), 'scripts': scripts,
                'bytecode_removed': [os.path.relpath(p, dest)
                                     for p in removed]}
        atomic.write_json(os.path.join(dest, MARKER), info, indent=2,
                          sort_keys=True)
        return info
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def describe(dest):
    """The ktp-variant.json of a variant copy, or None for a plain venv."""
    try:
        with open(os.path.join(dest, MARKER)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def main(argv=None):
    p = argparse.ArgumentParser(
        prog='python -m kerbside_tempest_plugin.lane.kerbside_variants',
        description='Kerbside venv copies with one promise broken.')
    sub = p.add_subparsers(dest='cmd', required=True)
    sub.add_parser('list', help='the variants')
    mk = sub.add_parser('make', help='copy a venv with a variant applied')
    mk.add_argument('variant', choices=list(VARIANTS))
    mk.add_argument('dest')
    mk.add_argument('--base', default=None,
                    help='default $KERBSIDE_VENV, else the cached venv')
    args = p.parse_args(argv)
    if args.cmd == 'list':
        for v in VARIANTS.values():
            print('%-24s %-10s %s' % (v.name, v.promise, v.description))
        return 0
    try:
        info = make_broken_venv(args.base or tools.default_kerbside_venv(),
                                args.variant, args.dest)
    except errors.HarnessError as e:
        print('error: %s' % e, file=sys.stderr)
        return 1
    print(info['diff'], end='')
    print('%s: %s (breaks %s)' % (info['dest'], info['description'],
                                  info['promise']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
