"""The per-test artifact directory.

One directory per test run, `<root>/<UTC stamp>-<name>/`, holding a PNG per
beat and per expired deadline, `digests.jsonl` (every decoded digest with
its capture time), `captures.jsonl`, the serial log, the ryll, qemu and
Kerbside logs, and `report.md`. Everything textual written or copied here
passes through redaction: known secret values (SPICE tickets, Kerbside
JWTs, .vv passwords) registered with `add_secret`, and patterns that look
like secrets (JWTs, `password=` values), are replaced before they touch
the disk. `finish()` scrubs the whole directory once more.
"""

import json
import os
import re
import shutil
import threading
import time

from kerbside_tempest_plugin.common import secrets as common_secrets


def _safe(name):
    return re.sub(r'[^A-Za-z0-9_.-]+', '-', name).strip('-')[:120] or 'run'


class ArtifactDir:
    """A test's artifact directory; every write is redacted."""

    def __init__(self, root, name, redactor=None, stamp=None):
        root = os.path.abspath(root or 'artifacts')
        os.makedirs(root, exist_ok=True)
        stamp = stamp or time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
        base = os.path.join(root, '%s-%s' % (stamp, _safe(name)))
        path, n = base, 1
        while True:
            try:
                os.makedirs(path)
                break
            except FileExistsError:
                n += 1
                path = '%s-%d' % (base, n)
        self.path = path
        self.name = name
        self.redactor = redactor or common_secrets.Redactor()
        self._lock = threading.Lock()
        self.files = []

    def __str__(self):
        return self.path

    # -- secrets

    def add_secret(self, value):
        self.redactor.add(value)

    def redact(self, text):
        return common_secrets.redact_patterns(self.redactor.redact(text))

    def redact_bytes(self, data):
        data = self.redactor.redact_bytes(data)
        text = data.decode('latin-1')
        clean = common_secrets.redact_patterns(text)
        return data if clean == text else clean.encode('latin-1')

    # -- writing

    def file(self, name):
        return os.path.join(self.path, name)

    def _note(self, name):
        with self._lock:
            if name not in self.files:
                self.files.append(name)
        return name

    def write_text(self, name, text):
        with open(self.file(name), 'w') as f:
            f.write(self.redact(text))
        return self._note(name)

    def append_text(self, name, text):
        with self._lock:
            with open(self.file(name), 'a') as f:
                f.write(self.redact(text))
        return self._note(name)

    def write_json(self, name, obj):
        return self.write_text(name, json.dumps(obj, indent=2,
                                                sort_keys=True,
                                                default=str) + '\n')

    def append_jsonl(self, name, obj):
        return self.append_text(name, json.dumps(obj, sort_keys=True,
                                                 default=str) + '\n')

    def save_png(self, stem, png):
        """Write PNG bytes as `<stem>.png`; returns the file name."""
        name = _safe(stem) + '.png'
        with open(self.file(name), 'wb') as f:
            f.write(png)
        return self._note(name)

    def copy_file(self, src, name=None, binary=False):
        """Copy `src` in (redacted unless `binary`); None if missing."""
        if not src or not os.path.isfile(src):
            return None
        name = name or os.path.basename(src)
        if binary:
            shutil.copyfile(src, self.file(name))
        else:
            with open(src, 'rb') as f:
                data = f.read()
            with open(self.file(name), 'wb') as f:
                f.write(self.redact_bytes(data))
        return self._note(name)

    def copy_logs(self, directory, prefix='', patterns=('.log', '.txt',
                                                        '.out', '.err')):
        """Copy every log-like file under `directory` (flattened names)."""
        copied = []
        if not directory or not os.path.isdir(directory):
            return copied
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames[:] = [d for d in dirnames if d != 'secrets']
            for fn in sorted(filenames):
                if not fn.endswith(patterns):
                    continue
                src = os.path.join(dirpath, fn)
                rel = os.path.relpath(src, directory).replace(os.sep, '__')
                out = self.copy_file(src, prefix + rel)
                if out:
                    copied.append(out)
        return copied

    def finish(self):
        """A last redaction pass over everything here; never raises.

        Binary files first (pcaps, PNGs, video, zips; raw and compressed
        content): evidence.scrub_binaries masks a secret in place at the
        same length or withholds the file, so the byte replacement of the
        text pass below never shifts a binary format.
        """
        try:
            from kerbside_tempest_plugin.scenario import evidence
            evidence.scrub_binaries(self.path, self.redactor)
            return common_secrets.scrub_tree(self.path, self.redactor)
        except Exception:
            return []

    def find_secrets(self):
        """Files here that still contain a registered secret (for tests)."""
        values = [v.encode() for v in self.redactor.values]
        hits = []
        for dirpath, _, filenames in os.walk(self.path):
            for fn in filenames:
                with open(os.path.join(dirpath, fn), 'rb') as f:
                    data = f.read()
                if any(v in data for v in values):
                    hits.append(fn)
        return hits
