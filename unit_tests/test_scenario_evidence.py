"""scenario.evidence: ryll's arguments, the pcap reader, and the secret
scan over binary files (a secret planted in a PNG, a pcap, a zip, or
inside a PNG's compressed data is masked or the file withheld).
"""

import io
import os
import struct
import zipfile
import zlib

import pytest

from kerbside_tempest_plugin.scenario import artifacts
from kerbside_tempest_plugin.scenario import evidence

TICKET = 'c0ffee-ticket-0123456789'
JWT = ('eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjb25zb2xlIn0.'
       'c2lnbmF0dXJlLW9mLWEtdG9rZW4')


class _Redactor:
    def __init__(self, *values):
        self.values = frozenset(values)


def _chunk(ctype, body):
    crc = zlib.crc32(ctype + body) & 0xffffffff
    return struct.pack('>I', len(body)) + ctype + body + struct.pack(
        '>I', crc)


def make_png(text_chunks=(), ztxt=None, w=4, h=3):
    raw = b''.join(b'\0' + b''.join(bytes([x * 40, y * 60, 90])
                                    for x in range(w)) for y in range(h))
    out = evidence.PNG_SIGNATURE + _chunk(
        b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
    for key, value in text_chunks:
        out += _chunk(b'tEXt', key + b'\0' + value)
    if ztxt is not None:
        out += _chunk(b'zTXt', b'Comment\0\0' + zlib.compress(ztxt))
    return out + _chunk(b'IDAT', zlib.compress(raw)) + _chunk(b'IEND', b'')


def make_pcap(payloads):
    out = struct.pack('>IHHiIII', 0xa1b2c3d4, 2, 4, 0, 0, 262144, 1)
    for i, payload in enumerate(payloads):
        tcp = struct.pack('>HHIIBBHHH', 10001, 5900, i, 0, 5 << 4, 0x18,
                          65535, 0, 0)
        ip = struct.pack('>BBHHHBBH4s4s', 0x45, 0, 40 + len(payload), 0,
                         0, 64, 6, 0, bytes([10, 0, 0, 1]),
                         bytes([10, 0, 0, 2]))
        frame = b'\0' * 12 + b'\x08\x00' + ip + tcp + payload
        out += struct.pack('>IIII', 1700000000 + i, 500, len(frame),
                           len(frame)) + frame
    return out


def test_argv_by_options(tmp_path):
    ev = evidence.RyllEvidence(scratch_parent=str(tmp_path))
    argv = ev.argv()
    assert argv[:2] == ['--capture', ev.capture_dir]
    assert argv[2:] == ['--pedantic', '--pedantic-dir', ev.pedantic_dir]
    assert ev.capture_dir.startswith(str(tmp_path))
    off = evidence.RyllEvidence(evidence.OFF, scratch_parent=str(tmp_path))
    assert off.argv() == [] and off.scratch is None
    only = evidence.RyllEvidence(evidence.EvidenceOptions(pedantic=False),
                                 scratch_parent=str(tmp_path))
    assert only.argv() == ['--capture', only.capture_dir]


def test_read_pcap_and_summary(tmp_path):
    data = make_pcap([b'REDQ' + b'\0' * 12, b'hello'])
    linktype, packets = evidence.read_pcap(data)
    assert linktype == 1 and len(packets) == 2
    assert evidence.tcp_payload(packets[1].data)[2] == b'hello'
    p = tmp_path / 'x.pcap'
    p.write_bytes(data)
    s = evidence.summarize_pcap(str(p))
    assert s['packets'] == 2 and s['link_stage_present'] is True
    assert s['client_to_server_bytes'] == 21


@pytest.mark.parametrize('bad, why', [
    (b'GIF89a' + b'\0' * 30, 'not a classic pcap'),
    (make_pcap([b'abcdef'])[:-3], 'claims'),
    (make_pcap([b'abcdef']) + b'\0' * 5, 'truncated'),
])
def test_read_pcap_rejects_garbage(bad, why):
    with pytest.raises(evidence.EvidenceError, match=why):
        evidence.read_pcap(bad)


def test_secret_in_a_pcap_is_masked_and_the_pcap_still_reads(tmp_path):
    p = tmp_path / 'main.pcap'
    p.write_bytes(make_pcap([b'abc' + TICKET.encode() + b'xyz', b'ok']))
    size = p.stat().st_size
    assert evidence.scrub_file(str(p), _Redactor(TICKET)) == 'masked'
    data = p.read_bytes()
    assert len(data) == size and TICKET.encode() not in data
    _, packets = evidence.read_pcap(data)
    assert evidence.tcp_payload(packets[0].data)[2] == \
        b'abc' + b'*' * len(TICKET) + b'xyz'


def test_secret_in_a_png_text_chunk_is_masked_and_the_png_decodes(
        tmp_path):
    from PIL import Image
    p = tmp_path / 'shot.png'
    p.write_bytes(make_png([(b'Comment', b'token ' + JWT.encode())]))
    assert evidence.scan_bytes(p.read_bytes(), [])[0].kind == 'JWT shape'
    assert evidence.scrub_file(str(p), _Redactor(TICKET)) == 'masked'
    assert b'eyJ' not in p.read_bytes()
    img = Image.open(str(p))
    img.load()   # CRCs were recomputed: a strict decoder accepts it
    assert img.size == (4, 3)


def test_secret_inside_compressed_png_data_withholds_the_file(tmp_path):
    p = tmp_path / 'frame.png'
    p.write_bytes(make_png(ztxt=b'password=' + TICKET.encode()))
    assert TICKET.encode() not in p.read_bytes()   # not in the raw bytes
    assert evidence.scrub_file(str(p), _Redactor(TICKET)) == 'withheld'
    assert not p.exists()
    note = (tmp_path / 'frame.png.withheld.txt').read_text()
    assert 'registered secret in PNG zTXt Comment' in note
    assert TICKET not in note


def test_secret_in_a_bug_report_zip_member_withholds_it(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:
        z.writestr('session.json', '{"password": "%s"}' % TICKET)
        z.writestr('screenshot.png', make_png())
    p = tmp_path / 'pedantic-report.zip'
    p.write_bytes(buf.getvalue())
    assert TICKET.encode() not in p.read_bytes()
    assert evidence.scrub_file(str(p), _Redactor(TICKET)) == 'withheld'
    assert 'zip member session.json' in (
        tmp_path / 'pedantic-report.zip.withheld.txt').read_text()


def test_clean_binaries_and_text_files_are_left_alone(tmp_path):
    png = tmp_path / 'a.png'
    png.write_bytes(make_png())
    txt = tmp_path / 'notes.log'
    txt.write_text('ticket %s\n' % TICKET)
    r = _Redactor(TICKET)
    assert evidence.scrub_file(str(png), r) is None
    assert evidence.scrub_file(str(txt), r) is None   # text: scrub_tree's


def test_artifact_finish_leaves_no_secret_in_any_file(tmp_path):
    art = artifacts.ArtifactDir(str(tmp_path), 'planted')
    art.add_secret(TICKET)
    os.makedirs(art.file('ryll'))
    with open(art.file('ryll/capture-inputs.pcap'), 'wb') as f:
        f.write(make_pcap([TICKET.encode(), JWT.encode()]))
    with open(art.file('00-awaiting.png'), 'wb') as f:
        f.write(make_png([(b'Comment', TICKET.encode())]))
    with open(art.file('frame.png'), 'wb') as f:
        f.write(make_png(ztxt=TICKET.encode()))
    with open(art.file('ryll.stdout.log'), 'w') as f:
        f.write('password=%s\n' % TICKET)
    assert len(evidence.find_secrets(art.path, [TICKET])) >= 4
    art.finish()
    assert evidence.find_secrets(art.path, [TICKET]) == []
    assert os.path.exists(art.file('frame.png.withheld.txt'))
    _, packets = evidence.read_pcap(open(
        art.file('ryll/capture-inputs.pcap'), 'rb').read())
    assert len(packets) == 2
