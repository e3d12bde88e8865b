"""Secret material of a lane: 0600 files in one directory, and redaction.

Everything secret (SPICE ticket, DB password, Kerbside auth seed, API JWT,
.vv files with console tokens, private keys, the MariaDB datadir that
stores tickets and console tokens) lives under `<workdir>/secrets/` (0700),
which is never an artifact. Every value put here is also known to the
`Redactor`, which scrubs text the harness writes elsewhere.
"""

import os
import re
import secrets as _secrets
import stat

from kerbside_tempest_plugin.common import atomic
from kerbside_tempest_plugin.common import vv

REDACTED = '<redacted>'

# Token shapes that cannot be anything else (pattern, replacement): masked
# in what the harness writes (SECRET_PATTERNS) and, as bytes, in every
# text file teardown scrubs (SCRUB_PATTERNS), where a token minted in
# another process (tempest's Nova provider, say) may sit that no Redactor
# saw. An event log's `"key": "enter"` is not one of them.
_TOKEN_SHAPES = [
    # Kerbside API tokens and Shaken Fist console tokens (base64url
    # header.payload.signature; the header starts with eyJ).
    (r'eyJ[\w-]+\.[\w-]+\.[\w-]+', REDACTED),
    # ?token=... / &token=... (Nova spice-direct, Kerbside sf-console.vv).
    (r'([?&]token=)[^&\s"\'<>]+', r'\1' + REDACTED),
    (r'(os-console-auth-tokens/)[^/\s"\'?<>]+', r'\1' + REDACTED),
]

# Shapes of secrets that must never be kept even when nobody registered the
# value with a Redactor: what the artifact writer and the cloud providers'
# error messages and logs both mask.
SECRET_PATTERNS = [(re.compile(p), r) for p, r in _TOKEN_SHAPES] + [
    # JSON values of secret-looking keys.
    (re.compile(r'(?i)("(?:access_token|key|password|adminPass|ticket|'
                r'token|secret)"\s*:\s*")[^"]*(")'),
     r'\1' + REDACTED + r'\2'),
    # .vv / ini style `password=...`: the rest of the line.
    (re.compile(r'(?im)^(\s*password\s*=).*$'), r'\1' + REDACTED),
    # qemu -spice ...,password=XXX (legacy form, in case a log shows it).
    (re.compile(r'(?i)([,?&]password=)[^,&\s]+'), r'\1' + REDACTED),
    (re.compile(r'(?i)(Authorization:\s*Bearer\s+)\S+'), r'\1' + REDACTED),
]

SCRUB_PATTERNS = [(re.compile(p.encode()), r.encode())
                  for p, r in _TOKEN_SHAPES]
# Text files only: one with a NUL byte in its first 8 KiB (a disk image, a
# pcap) is binary, and a shape found there would be chance.
_BINARY_PROBE = 8192


def _is_text(data):
    return b'\0' not in data[:_BINARY_PROBE]


def _files(root, skip=(), max_size=64 * 1024 * 1024):
    """(path, bytes) of every regular file under `root` up to `max_size`,
    links and directories in `skip` left out; unreadable ones passed over.
    """
    skip = {os.path.abspath(s) for s in skip}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames
                       if os.path.abspath(os.path.join(dirpath, d))
                       not in skip]
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                if os.path.islink(path) or not os.path.isfile(path) or \
                        os.lstat(path).st_size > max_size:
                    continue
                with open(path, 'rb') as f:
                    yield path, f.read()
            except OSError:
                continue


def redact_token_shapes(data):
    """`data` (bytes) with every SCRUB_PATTERNS match masked (a mask in
    place does not match again).
    """
    for pattern, repl in SCRUB_PATTERNS:
        data = pattern.sub(repl, data)
    return data


def find_token_shapes(root, max_size=64 * 1024 * 1024):
    """[(path, count)] of the text files under `root` that still hold a
    SCRUB_PATTERNS match (masks excepted): what a job checks in its kept
    artifacts after teardown. Names files, never the values.
    """
    found = []
    for path, data in _files(root, max_size=max_size):
        if _is_text(data):
            n = sum(len(p.findall(data)) for p, _ in SCRUB_PATTERNS)
            if n:
                found.append((path, n))
    return found


def redact_patterns(text):
    """`text` with everything shaped like a secret masked."""
    for pattern, repl in SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def random_token(nbytes=16):
    return _secrets.token_hex(nbytes)


def write_private(path, data, mode=0o600):
    """Write `data` to a fresh file only the owner can read.

    O_EXCL|O_NOFOLLOW after unlinking: never follows a planted symlink and
    never inherits looser permissions from an old file.
    """
    if isinstance(data, str):
        data = data.encode()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                 mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


class Redactor:
    """Replaces known secret values in text with `<redacted>`."""

    MIN_LEN = 6  # shorter values would redact ordinary words

    def __init__(self):
        self._values = set()

    def add(self, value):
        if value is None:
            return
        value = str(value).strip()
        if len(value) >= self.MIN_LEN:
            self._values.add(value)

    @property
    def values(self):
        return frozenset(self._values)

    def redact(self, text):
        if text is None:
            return text
        # Longest first, so a secret containing another is removed whole.
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def redact_bytes(self, data):
        for value in sorted(self._values, key=len, reverse=True):
            raw = value.encode()
            if raw in data:
                data = data.replace(raw, REDACTED.encode())
        return data


class SecretStore:
    """The `secrets/` directory of a workdir."""

    def __init__(self, path, redactor=None):
        self.path = os.path.abspath(path)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        os.chmod(self.path, 0o700)
        self.redactor = redactor or Redactor()

    def file(self, name):
        return os.path.join(self.path, name)

    def put(self, name, value):
        """Store `value` in `secrets/<name>` (0600) and return the path."""
        self.redactor.add(value)
        return write_private(self.file(name), value)

    def get(self, name):
        """The stored value, or None. Also teaches the redactor."""
        try:
            with open(self.file(name)) as f:
                value = f.read()
        except FileNotFoundError:
            return None
        self.redactor.add(value)
        return value

    def get_or_create(self, name, factory=random_token):
        value = self.get(name)
        if value is None:
            value = factory()
            self.put(name, value)
        return value

    def load_all(self):
        """Teach the redactor every small secret file (after a crash, `down`
        rebuilds redaction from what is on disk).
        """
        for entry in os.scandir(self.path):
            if entry.is_file() and entry.stat().st_size < 64 * 1024:
                try:
                    with open(entry.path, errors='replace') as f:
                        text = f.read()
                except OSError:
                    continue
                if entry.name.endswith('.vv'):
                    try:
                        self.redactor.add(vv.parse_vv(text).get('password'))
                    except vv.VVError:
                        self.redactor.add(text)
                else:
                    self.redactor.add(text)
        return self.redactor


def scrub_tree(root, redactor, skip=(), max_size=64 * 1024 * 1024):
    """Redact known secret values in every regular file under `root`,
    in place, skipping directories in `skip`. Returns the paths changed.

    A safety net run at teardown over logs written by other programs; the
    harness itself never writes a secret outside `secrets/`. Besides the
    values `redactor` knows, every token shape in SCRUB_PATTERNS is
    masked (tokens minted by another process, which no redactor saw) in
    text files: a file with a NUL byte in its first 8 KiB (a disk image,
    a pcap) gets only the known values.
    """
    changed = []
    for path, data in _files(root, skip, max_size):
        new = redactor.redact_bytes(data)
        if _is_text(data):
            new = redact_token_shapes(new)
        if new == data:
            continue
        try:
            keep = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue                    # gone meanwhile
        # atomically: another teardown may scrub the same file at once
        atomic.write_bytes(path, new, keep)
        changed.append(path)
    return changed
