"""ryll's own evidence of a run, and a secret scan that reads binaries.

ryll 0.3.0 can keep two kinds of evidence (measured; docs/plans/
reports-and-evidence.md):

- ``--capture DIR``: ``metadata.json`` (ryll version and git sha, target
  host:port, TLS port, start time) and one classic pcap per channel
  (``main``, ``display``, ``cursor``, ``inputs``, ``usbredir``; big-endian,
  microsecond stamps, Ethernet link type). Each record is a made-up
  Ethernet/IPv4/TCP frame (client 10.0.0.1:1000N, server 10.0.0.2:5900)
  around the SPICE messages of that channel *after* the link stage, as
  ryll sent and received them, so after TLS: the link message, the
  server's RSA key and the RSA-encrypted ticket are not in it, but every
  key event, clipboard byte and pixel is, in clear. The binary also knows
  a ``display.mp4`` (H.264) writer, but in ``--headless`` it writes none.
- ``--pedantic --pedantic-dir DIR``: one bug-report zip the first time
  each distinct protocol gap is seen (at most 50). A clean walk writes
  none; the directory is created empty.

`RyllEvidence` turns the options into ryll arguments (into a scratch
directory beside ryll's logs, never straight into the artifacts) and,
once ryll has stopped, `collect()`s the files into ``<artifacts>/ryll/``
through `scrub_file`, with a short summary of every pcap.

`scrub_file` / `scrub_binaries` are the scan for binary files. A
registered secret (ticket, JWT, .vv password) or anything shaped like a
JWT is looked for in the raw bytes and inside what the file compresses:
zip members, the zlib streams of a PNG (IDAT, zTXt, iTXt) and gzip. A hit
in the raw bytes is overwritten in place with as many ``*`` bytes (the
pcap, PNG or MP4 keeps its structure and lengths); a hit only inside
compressed data cannot be masked that way, so the file is withheld: it is
removed and ``<name>.withheld.txt`` says which kind of secret was found
where (never the value).
"""

import dataclasses
import gzip
import io
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import zipfile
import zlib

LOG = logging.getLogger(__name__)

CHANNELS = ('main', 'display', 'cursor', 'inputs', 'usbredir')
VIDEO_NAME = 'display.mp4'
EVIDENCE_DIR = 'ryll'
# Files the scan treats as binary by name; anything with a NUL byte too.
BINARY_SUFFIXES = ('.pcap', '.pcapng', '.png', '.mp4', '.zip', '.jpg',
                   '.jpeg', '.gz', '.webm', '.gif')
JWT_BYTES = re.compile(rb'eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.'
                       rb'[A-Za-z0-9_-]{4,}')
MASK = b'*'
PCAP_MAGIC = {b'\xa1\xb2\xc3\xd4': ('>', 1e-6), b'\xd4\xc3\xb2\xa1':
              ('<', 1e-6), b'\xa1\xb2\x3c\x4d': ('>', 1e-9),
              b'\x4d\x3c\xb2\xa1': ('<', 1e-9)}
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


class EvidenceError(Exception):
    """A capture file is not what it claims to be."""


# ------------------------------------------------------------- options


@dataclasses.dataclass
class EvidenceOptions:
    """Which of ryll's evidence a run keeps (both by default)."""
    capture: bool = True
    pedantic: bool = True

    @classmethod
    def from_conf(cls, kerbside_conf):
        """From the [kerbside] group (ryll_capture, ryll_pedantic)."""
        return cls(capture=kerbside_conf.ryll_capture,
                   pedantic=kerbside_conf.ryll_pedantic)

    @property
    def enabled(self):
        return self.capture or self.pedantic


OFF = EvidenceOptions(capture=False, pedantic=False)


class RyllEvidence:
    """ryll arguments for one run, and collection after ryll stopped."""

    def __init__(self, options=None, scratch_parent=None):
        self.options = options or EvidenceOptions()
        self.scratch = None
        if self.options.enabled:
            if scratch_parent:
                os.makedirs(scratch_parent, exist_ok=True)
            self.scratch = tempfile.mkdtemp(prefix='ryll-evidence-',
                                            dir=scratch_parent)
        self.summary = {'capture': self.options.capture,
                        'pedantic': self.options.pedantic, 'files': []}

    @property
    def capture_dir(self):
        return os.path.join(self.scratch, 'capture') if self.scratch \
            else None

    @property
    def pedantic_dir(self):
        return os.path.join(self.scratch, 'pedantic') if self.scratch \
            else None

    def argv(self):
        """Extra ryll arguments (paths only)."""
        args = []
        if self.options.capture:
            args += ['--capture', self.capture_dir]
        if self.options.pedantic:
            args += ['--pedantic', '--pedantic-dir', self.pedantic_dir]
        return args

    def collect(self, art):
        """Copy what ryll wrote into ``<art>/ryll/`` through the secret
        scan, summarise it into ``ryll/evidence.json``, drop the scratch
        directory. Call once ryll has exited (its writers flush at exit).
        Returns the summary.
        """
        if self.scratch is None:
            return self.summary
        dest = os.path.join(art.path, EVIDENCE_DIR)
        os.makedirs(dest, exist_ok=True)
        files = []
        for sub in ('capture', 'pedantic'):
            src_dir = os.path.join(self.scratch, sub)
            if not os.path.isdir(src_dir):
                continue
            for fn in sorted(os.listdir(src_dir)):
                src = os.path.join(src_dir, fn)
                if not os.path.isfile(src):
                    continue
                rel = '%s/%s-%s' % (EVIDENCE_DIR, sub, fn)
                out = os.path.join(art.path, rel)
                shutil.copyfile(src, out)
                action = scrub_file(out, art.redactor)
                entry = {'name': rel, 'kind': _kind(fn), 'source': sub,
                         'scan': action or 'clean'}
                if action == 'withheld':
                    entry['name'] = rel + '.withheld.txt'
                else:
                    entry['bytes'] = os.path.getsize(out)
                    if fn.endswith('.pcap'):
                        try:
                            entry['pcap'] = summarize_pcap(out)
                        except EvidenceError as e:
                            entry['pcap_error'] = str(e)
                    if fn == 'metadata.json':
                        entry['metadata'] = _load_json(out)
                    art._note(entry['name'])
                files.append(entry)
        self.summary['files'] = files
        self.summary['bytes'] = sum(f.get('bytes', 0) for f in files)
        self.summary['pedantic_reports'] = sum(
            1 for f in files if f['source'] == 'pedantic')
        self.summary['video'] = next(
            (f['name'] for f in files if f['kind'] == 'video'), None)
        art.write_json(EVIDENCE_DIR + '/evidence.json', self.summary)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch = None
        return self.summary

    def discard(self):
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


def _kind(fn):
    if fn.endswith('.pcap'):
        return 'pcap'
    if fn.endswith('.mp4'):
        return 'video'
    if fn.endswith('.zip'):
        return 'bug report'
    if fn.endswith('.json'):
        return 'json'
    return 'file'


def _load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {'error': str(e)}


# ---------------------------------------------------------------- pcap


@dataclasses.dataclass
class Packet:
    ts: float
    data: bytes
    orig_len: int


def read_pcap(data):
    """(link type, [Packet]) of a classic pcap given as bytes."""
    if len(data) < 24 or data[:4] not in PCAP_MAGIC:
        raise EvidenceError('not a classic pcap (magic %r)' % data[:4])
    endian, unit = PCAP_MAGIC[data[:4]]
    linktype = struct.unpack(endian + 'I', data[20:24])[0]
    packets = []
    off = 24
    while off < len(data):
        if off + 16 > len(data):
            raise EvidenceError('pcap truncated in a record header at '
                                'byte %d' % off)
        sec, frac, incl, orig = struct.unpack(endian + 'IIII',
                                              data[off:off + 16])
        off += 16
        if off + incl > len(data):
            raise EvidenceError('pcap record at byte %d claims %d bytes, '
                                '%d left' % (off - 16, incl,
                                             len(data) - off))
        packets.append(Packet(sec + frac * unit, data[off:off + incl],
                              orig))
        off += incl
    return linktype, packets


def tcp_payload(frame):
    """(src port, dst port, payload) of an Ethernet/IPv4/TCP frame."""
    if len(frame) < 14 + 20 or frame[12:14] != b'\x08\x00':
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0f) * 4
    if ip[9] != 6 or len(ip) < ihl + 20:
        return None
    tcp = ip[ihl:]
    sport, dport = struct.unpack('>HH', tcp[:4])
    doff = (tcp[12] >> 4) * 4
    return sport, dport, tcp[doff:]


def summarize_pcap(path):
    """Packets, payload bytes each way, time span, and whether a SPICE
    link message (``REDQ``) is in it.
    """
    with open(path, 'rb') as f:
        data = f.read()
    linktype, packets = read_pcap(data)
    to_server = to_client = 0
    link = False
    for p in packets:
        parsed = tcp_payload(p.data)
        if parsed is None:
            continue
        sport, dport, payload = parsed
        if dport == 5900:
            to_server += len(payload)
        else:
            to_client += len(payload)
        link = link or payload.startswith(b'REDQ')
    span = packets[-1].ts - packets[0].ts if packets else 0.0
    return {'linktype': linktype, 'packets': len(packets),
            'client_to_server_bytes': to_server,
            'server_to_client_bytes': to_client,
            'span_s': round(span, 3), 'link_stage_present': link}


# ---------------------------------------------------------- secret scan


@dataclasses.dataclass
class Finding:
    where: str          # 'raw' or e.g. 'zip member session.json'
    kind: str           # 'registered secret' or 'JWT shape'
    offset: int = None  # in the raw bytes (raw findings only)
    length: int = None

    def describe(self):
        at = '' if self.offset is None else ' at byte %d' % self.offset
        return '%s in %s%s' % (self.kind, self.where, at)


def _png_views(data):
    """Decompressed zlib streams of a PNG: IDAT (joined), zTXt, iTXt."""
    if not data.startswith(PNG_SIGNATURE):
        return
    off = len(PNG_SIGNATURE)
    idat = []
    while off + 8 <= len(data):
        length, ctype = struct.unpack('>I4s', data[off:off + 8])
        body = data[off + 8:off + 8 + length]
        off += 12 + length
        if ctype == b'IDAT':
            idat.append(body)
        elif ctype == b'zTXt':
            key, _, rest = body.partition(b'\0')
            yield 'PNG zTXt %s' % key.decode('latin-1'), rest[1:]
        elif ctype == b'iTXt':
            key, _, rest = body.partition(b'\0')
            if rest[:1] == b'\1':
                # flag, method, language\0, translated keyword\0, text
                tail = rest[2:].split(b'\0', 2)
                if len(tail) == 3:
                    yield 'PNG iTXt %s' % key.decode('latin-1'), tail[2]
    if idat:
        yield 'PNG IDAT', b''.join(idat)


def _inflate(blob):
    try:
        return zlib.decompressobj().decompress(blob, 256 * 1024 * 1024)
    except zlib.error:
        return None


def compressed_views(data, depth=0):
    """(label, decompressed bytes) for what `data` compresses, nested up
    to two levels (a PNG inside a bug-report zip).
    """
    if depth > 2:
        return
    if data[:4] == b'PK\x03\x04':
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for info in z.infolist():
                    try:
                        member = z.read(info)
                    except (zipfile.BadZipFile, RuntimeError,
                            NotImplementedError, zlib.error) as e:
                        yield 'zip member %s (unreadable: %s)' % (
                            info.filename, e), b''
                        continue
                    label = 'zip member %s' % info.filename
                    yield label, member
                    for sub, inner in compressed_views(member, depth + 1):
                        yield '%s / %s' % (label, sub), inner
        except zipfile.BadZipFile:
            pass
    elif data.startswith(PNG_SIGNATURE):
        for label, blob in _png_views(data):
            inner = _inflate(blob)
            if inner is not None:
                yield label, inner
    elif data[:2] == b'\x1f\x8b':
        try:
            yield 'gzip', gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            pass


def _raw_hits(data, values):
    hits = []
    for v in values:
        start = 0
        while True:
            i = data.find(v, start)
            if i < 0:
                break
            hits.append(Finding('raw', 'registered secret', i, len(v)))
            start = i + 1
    for m in JWT_BYTES.finditer(data):
        hits.append(Finding('raw', 'JWT shape', m.start(),
                            m.end() - m.start()))
    return hits


def scan_bytes(data, values):
    """Every Finding in `data` (raw, and inside what it compresses) of
    the byte strings `values` and of JWT shapes.
    """
    values = [v if isinstance(v, bytes) else str(v).encode()
              for v in values if v]
    findings = _raw_hits(data, values)
    for label, inner in compressed_views(data):
        for h in _raw_hits(inner, values):
            findings.append(Finding(label, h.kind))
    return findings


def is_binary(path, head=None):
    if path.lower().endswith(BINARY_SUFFIXES):
        return True
    if head is None:
        try:
            with open(path, 'rb') as f:
                head = f.read(8192)
        except OSError:
            return False
    return b'\0' in head


def scrub_file(path, redactor):
    """Scan one binary file; mask raw hits in place (same length) or
    withhold the file. Returns None (clean), 'masked' or 'withheld'.
    Text files are left to lane.secrets.scrub_tree (None).
    """
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError:
        return None
    if not is_binary(path, data[:8192]):
        return None
    findings = scan_bytes(data, redactor.values)
    if not findings:
        return None
    # A zip's members carry CRCs a mask would break; withhold it.
    if all(h.where == 'raw' for h in findings) and \
            data[:4] != b'PK\x03\x04':
        buf = bytearray(data)
        for h in findings:
            buf[h.offset:h.offset + h.length] = MASK * h.length
        if data.startswith(PNG_SIGNATURE):
            _fix_png_crcs(buf)
        # Masking a raw hit may not reach one inside compressed data that
        # happens to be stored uncompressed; scan the result once more.
        if not scan_bytes(bytes(buf), redactor.values):
            with open(path, 'r+b') as f:
                f.write(bytes(buf))
            LOG.warning('masked %d secret(s) in %s', len(findings), path)
            return 'masked'
    _withhold(path, findings)
    return 'withheld'


def _fix_png_crcs(buf):
    """Recompute every chunk CRC of a PNG (after a mask inside one)."""
    off = len(PNG_SIGNATURE)
    while off + 12 <= len(buf):
        length = struct.unpack('>I', bytes(buf[off:off + 4]))[0]
        end = off + 8 + length
        if end + 4 > len(buf):
            break
        crc = zlib.crc32(bytes(buf[off + 4:end])) & 0xffffffff
        buf[end:end + 4] = struct.pack('>I', crc)
        off = end + 4


def _withhold(path, findings):
    os.unlink(path)
    with open(path + '.withheld.txt', 'w') as f:
        f.write('%s was not kept: a secret was found in it, inside '
                'compressed data that cannot be masked in place.\n'
                % os.path.basename(path))
        for h in findings:
            f.write('- %s\n' % h.describe())
    LOG.warning('withheld %s: %s', path,
                '; '.join(h.describe() for h in findings))


def scrub_binaries(root, redactor, max_size=256 * 1024 * 1024):
    """scrub_file over every binary file under `root`; returns
    {path: action} for the files changed.
    """
    changed = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != 'secrets']
        for fn in filenames:
            path = os.path.join(dirpath, fn)
            try:
                if os.path.islink(path) or \
                        os.path.getsize(path) > max_size:
                    continue
            except OSError:
                continue
            action = scrub_file(path, redactor)
            if action:
                changed[path] = action
    return changed


def find_secrets(root, values):
    """Every (file, Finding) under `root` still holding one of `values` or
    a JWT shape, text or binary, raw or compressed (for tests).
    """
    out = []
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            path = os.path.join(dirpath, fn)
            with open(path, 'rb') as f:
                data = f.read()
            out += [(path, h) for h in scan_bytes(data, values)]
    return out
