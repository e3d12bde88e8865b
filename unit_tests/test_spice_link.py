"""spice.link against a fake SPICE server on loopback, and the firewall
story's decisions (scenario.promise_firewall) without a lane.

The fake server speaks the server side of the link (the reply, its RSA
key, the ticket's verdict) and mini-header messages; each test picks
how it behaves: a normal main + inputs session, a garbled reply, a link
error code, a refused ticket, EOF in the middle of a message, silence.
"""

import datetime
import os
import socket
import ssl
import struct
import threading
import time

import pytest

from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography import x509
from cryptography.x509.oid import NameOID

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.scenario import promise_firewall as pf
from kerbside_tempest_plugin.scenario import promise_stories
from kerbside_tempest_plugin.scenario import promises as pr
from kerbside_tempest_plugin.spice import link

TICKET = 'console-token-for-the-fake-0123456789abcdef'
SESSION_ID = 0x5eed1234
# AUTH_SELECTION | AUTH_SPICE | MINI_HEADER
SERVER_CAPS = 0b1011
_KEY = []


def server_key():
    if not _KEY:
        _KEY.append(rsa.generate_private_key(public_exponent=65537,
                                             key_size=1024))
    return _KEY[0]


def recv_exact(conn, n):
    buf = b''
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError('EOF after %d of %d' % (len(buf), n))
        buf += chunk
    return buf


def msg(msg_type, body=b''):
    return struct.pack('<HI', msg_type, len(body)) + body


def link_reply(error=0, caps=SERVER_CAPS):
    der = server_key().public_key().public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo)
    assert len(der) == 162
    body = struct.pack('<I162sIII', error, der, 1, 0, 178) + \
        struct.pack('<I', caps)
    return struct.pack('<4sIII', b'REDQ', 2, 2, len(body)) + body


class Conn:
    """One accepted connection: what the client linked and sent."""

    def __init__(self, sock):
        self.sock = sock
        self.channel_type = None
        self.connection_id = None
        self.common_caps = None
        self.ticket = None
        self.auth_mechanism = None
        self.messages = []      # (type, declared size, body)
        self.closed = threading.Event()


class FakeSpiceServer:
    """A SPICE server on 127.0.0.1. `behaviour` is one of: ok, garbled,
    link_error, short_reply, bad_ticket, no_mini, eof_mid, silent,
    silent_after_link, huge_header. `on_inputs(server, conn, type,
    size)` may return 'close' to end the inputs channel at a header
    (before its body) or 'close_after' to read the body first and then
    end it.
    """

    def __init__(self, behaviour='ok', link_error_code=7, tls_ctx=None,
                 ack_window=2, on_inputs=None):
        self.behaviour = behaviour
        self.link_error_code = link_error_code
        self.tls_ctx = tls_ctx
        self.ack_window = ack_window
        self.on_inputs = on_inputs
        self.conns = []
        self.errors = []
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(('127.0.0.1', 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self._stop = threading.Event()
        self._threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self):
        self.lsock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                sock, _ = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(sock,),
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, sock):
        conn = None
        try:
            if self.tls_ctx is not None:
                sock.settimeout(5)
                sock = self.tls_ctx.wrap_socket(sock, server_side=True)
            sock.settimeout(5)
            conn = Conn(sock)
            self.conns.append(conn)
            self._handle(conn)
        except (EOFError, OSError, ssl.SSLError):
            pass
        except Exception as e:  # a bug in the fake must show
            self.errors.append(repr(e))
        finally:
            if conn is not None:
                conn.closed.set()
            try:
                sock.close()
            except OSError:
                pass

    def _link(self, conn):
        magic, major, minor, size = struct.unpack('<4sIII',
                                                  recv_exact(conn.sock, 16))
        mess = recv_exact(conn.sock, size)
        (conn.connection_id, conn.channel_type, _, n_common, n_chan,
         off) = struct.unpack_from('<IBBIII', mess)
        conn.common_caps = struct.unpack_from('<%dI' % n_common, mess, off)
        b = self.behaviour
        if b == 'garbled':
            conn.sock.sendall(b'HTTP/1.1 400 Bad Request\r\n\r\n')
            return False
        if b == 'silent':
            self._stop.wait(10)
            return False
        if b == 'link_error':
            conn.sock.sendall(link_reply(error=self.link_error_code))
            return False
        if b == 'short_reply':
            conn.sock.sendall(link_reply()[:26])
            self._stop.wait(10)
            return False
        if conn.channel_type == 3 and conn.connection_id != SESSION_ID:
            conn.sock.sendall(link_reply(error=8))
            return False
        conn.sock.sendall(link_reply(caps=0b0011 if b == 'no_mini'
                                     else SERVER_CAPS))
        if b == 'no_mini':
            return False
        if b == 'short_reply':
            return False
        conn.auth_mechanism = struct.unpack('<I', recv_exact(conn.sock,
                                                             4))[0]
        enc = recv_exact(conn.sock, 128)
        conn.ticket = server_key().decrypt(enc, padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA1()),
            algorithm=hashes.SHA1(), label=None))
        ok = conn.ticket == TICKET.encode() + b'\0' and b != 'bad_ticket'
        conn.sock.sendall(struct.pack('<I', 0 if ok else 7))
        return ok

    def _handle(self, conn):
        if not self._link(conn):
            return
        b = self.behaviour
        if b == 'eof_mid':
            conn.sock.sendall(struct.pack('<HI', 103, 100) + b'x' * 10)
            return
        if b == 'huge_header':
            conn.sock.sendall(struct.pack('<HI', 103, 0x7fffffff))
            self._stop.wait(5)
            return
        if b == 'silent_after_link':
            self._stop.wait(10)
            return
        if conn.channel_type == 1:
            conn.sock.sendall(
                msg(3, struct.pack('<II', 7, self.ack_window)) +
                msg(4, struct.pack('<IQ', 1, 123456789) + b'pad') +
                msg(103, struct.pack('<I', SESSION_ID) + b'\0' * 28))
        elif conn.channel_type == 3:
            conn.sock.sendall(msg(101, struct.pack('<H', 0)))
        self._read_messages(conn)

    def _read_messages(self, conn):
        while not self._stop.is_set():
            try:
                head = recv_exact(conn.sock, 6)
            except socket.timeout:
                continue
            msg_type, size = struct.unpack('<HI', head)
            verdict = None
            if conn.channel_type == 3 and self.on_inputs:
                verdict = self.on_inputs(self, conn, msg_type, size)
            if verdict == 'close':
                conn.messages.append((msg_type, size, None))
                return
            body = recv_exact(conn.sock, size)
            conn.messages.append((msg_type, size, body))
            if verdict == 'close_after':
                return

    def conn_of(self, channel_type, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for c in self.conns:
                if c.channel_type == channel_type:
                    return c
            time.sleep(0.01)
        raise AssertionError('no connection of type %d' % channel_type)

    def wait_messages(self, conn, n, timeout=5):
        deadline = time.monotonic() + timeout
        while len(conn.messages) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(conn.messages)

    def close(self):
        self._stop.set()
        self.lsock.close()
        for c in self.conns:
            try:
                c.sock.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(3)
        assert not self.errors, self.errors


@pytest.fixture
def server_factory():
    made = []

    def make(**kw):
        s = FakeSpiceServer(**kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def open_session(srv, timeout=5.0, **kw):
    return link.Session.open('127.0.0.1', srv.port, TICKET, timeout=timeout,
                             **kw)


# ------------------------------------------------------------ wire format


def test_link_mess_layout():
    data = link.pack_link_mess(link.ChannelType.INPUTS, connection_id=42)
    magic, major, minor, size = struct.unpack_from('<4sIII', data)
    assert (magic, major, minor, size) == (b'REDQ', 2, 2, 18 + 4)
    assert struct.unpack_from('<IBBIIII', data, 16) == (
        42, 3, 0, 1, 0, 18, SERVER_CAPS)


def test_caps_words_and_has_cap():
    assert link.caps_words([0, 1, 3]) == (0b1011,)
    assert link.caps_words([33]) == (0, 2)
    assert link.caps_words([]) == ()
    assert link.has_cap((0b1011,), link.CommonCap.MINI_HEADER)
    assert not link.has_cap((0b0011,), link.CommonCap.MINI_HEADER)
    assert not link.has_cap((), 0)


def test_pack_message_declares_what_it_is_told():
    assert link.pack_message(101, b'\x1c\0\0\0') == \
        struct.pack('<HI', 101, 4) + b'\x1c\0\0\0'
    data = link.pack_message(101, b'\x1c\0\0\0', declared_size=5000)
    assert struct.unpack_from('<HI', data) == (101, 5000)
    assert len(data) == 10


def test_link_header_not_spice():
    with pytest.raises(link.SpiceLinkError) as e:
        link.parse_link_header(b'HTTP/1.1 400 Bad', 'main')
    assert 'not the SPICE magic REDQ' in str(e.value)
    assert e.value.code is None and e.value.channel == 'main'
    assert isinstance(e.value, errors.HarnessError)


def test_link_header_other_major_and_huge_size():
    with pytest.raises(link.SpiceLinkError, match='SPICE protocol 1, not 2'):
        link.parse_link_header(struct.pack('<4sIII', b'REDQ', 1, 3, 178))
    with pytest.raises(link.SpiceLinkError, match='a 99999-byte link'):
        link.parse_link_header(struct.pack('<4sIII', b'REDQ', 2, 2, 99999))
    with pytest.raises(link.SpiceLinkError, match='3 bytes, not a 16-byte'):
        link.parse_link_header(b'RED')
    assert link.parse_link_header(struct.pack('<4sIII', b'REDQ', 2, 3,
                                              178)) == (2, 3, 178)


def test_link_reply_parsed():
    reply = link.parse_link_reply(link_reply()[16:])
    assert reply.error == 0 and len(reply.pub_key) == 162
    assert reply.common_caps == (SERVER_CAPS,) and reply.channel_caps == ()
    assert reply.has_common(link.CommonCap.AUTH_SELECTION)


def test_link_reply_garbled():
    with pytest.raises(link.SpiceLinkError, match='no error code'):
        link.parse_link_reply(b'\0\0')
    with pytest.raises(link.SpiceLinkError,
                       match='a SpiceLinkReply has at least 178'):
        link.parse_link_reply(b'\0' * 100)
    body = bytearray(link_reply()[16:])
    struct.pack_into('<I', body, 170, 5)     # 5 channel caps: past the end
    with pytest.raises(link.SpiceLinkError, match='run past its 182 bytes'):
        link.parse_link_reply(bytes(body))
    # An error reply is returned for the caller to name, even if short.
    assert link.parse_link_reply(struct.pack('<I', 5)).error == 5


def test_link_error_names():
    e = link.SpiceLinkError('refused', code=7, channel='inputs')
    assert e.code_name == 'PERMISSION_DENIED'
    assert 'SPICE link error 7, PERMISSION_DENIED' in str(e)
    assert link.link_error_name(5) == 'NEED_SECURED'
    assert link.link_error_name(42) == 'unknown code 42'
    assert link.link_error_name(None) is None


def test_timeout_is_a_harness_timeout():
    e = link.SpiceTimeout('x', channel='main')
    assert isinstance(e, errors.HarnessTimeout)
    assert isinstance(e, link.SpiceLinkError)


def test_ticket_encryption_roundtrip():
    der = link_reply()[16 + 4:16 + 4 + 162]
    enc = link.encrypt_ticket(der, 'abc')
    assert len(enc) == 128
    assert server_key().decrypt(enc, padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(),
        label=None)) == b'abc\0'


def test_ticket_garbled_key_and_too_long():
    with pytest.raises(link.SpiceLinkError, match='not an RSA key'):
        link.encrypt_ticket(b'\0' * 162, 'abc')
    with pytest.raises(link.SpiceLinkError, match='at most 60'):
        link.encrypt_ticket(link_reply()[20:182], 'x' * 61)


def test_parse_subject():
    assert link.parse_subject('C=US,O=KB E2E,CN=kb-proxy') == [
        ('C', 'US'), ('O', 'KB E2E'), ('CN', 'kb-proxy')]
    assert link.parse_subject('o=Example\\, Inc, cn = p') == [
        ('O', 'Example, Inc'), ('CN', 'p')]
    with pytest.raises(ValueError):
        link.parse_subject('CN=a,junk')


def test_message_names_are_the_wire_names():
    assert link.message_name(1, 103) == '103 (init)'
    assert link.message_name(3, 4) == '4 (ping)'
    assert link.message_name(3, 101, 'c2s') == '101 (key_down)'
    assert link.message_name(3, 9999) == '9999 (type-9999)'
    assert link.MSG_MAIN_INIT == 103 and link.MSGC_PONG == 3
    assert link.ChannelType.INPUTS == 3 and link.ChannelType(2).name == \
        'DISPLAY'


# ------------------------------------------------------- against the fake


def test_session_links_main_and_inputs(server_factory):
    srv = server_factory()
    with open_session(srv) as s:
        assert s.session_id == SESSION_ID
        main, inputs = srv.conn_of(1), srv.conn_of(3)
        assert main.connection_id == 0
        assert inputs.connection_id == SESSION_ID
        for c in (main, inputs):
            assert c.ticket == TICKET.encode() + b'\0'
            assert c.auth_mechanism == link.CommonCap.AUTH_SPICE
            assert c.common_caps == (SERVER_CAPS,)
        assert s.types_received('main')[:3] == [3, 4, 103]
        assert s.types_received('inputs') == [101]
        # SET_ACK -> ACK_SYNC(generation); PING -> PONG(id, timestamp);
        # then an ACK once the window (2: PING, MAIN_INIT) was received.
        got = srv.wait_messages(main, 3)
        assert got[0] == (1, 4, struct.pack('<I', 7))
        assert got[1] == (3, 12, struct.pack('<IQ', 1, 123456789))
        assert got[2] == (2, 0, b'')
        s.key(0x1c, gap=0)
        got = srv.wait_messages(inputs, 2)
        assert got == [(101, 4, b'\x1c\0\0\0'), (102, 4, b'\x9c\0\0\0')]
        assert [(x.type, x.declared_size) for x in s.sent] == [
            (101, 4), (102, 4)]
        assert s.ended('main') is None and s.ended('inputs') is None


def test_session_send_declares_a_size(server_factory):
    srv = server_factory()
    with open_session(srv) as s:
        s.send('inputs', 9999, b'\x1c\0\0\0')
        s.send('inputs', 101, b'\x1c\0\0\0' + b'\0' * 96, declared_size=100)
        got = srv.wait_messages(srv.conn_of(3), 2)
        assert got[0] == (9999, 4, b'\x1c\0\0\0')
        assert got[1][:2] == (101, 100)


def test_server_ending_inputs_is_recorded_with_time(server_factory):
    def cap(server, conn, msg_type, size):
        return 'close' if size > 4096 else None
    srv = server_factory(on_inputs=cap)
    with open_session(srv) as s:
        t0 = time.monotonic()
        s.send('inputs', 101, b'\x1c\0\0\0' + b'\0' * 4996)
        end = s.wait_ended('inputs', 5)
        assert end is not None and end.channel == 'inputs'
        assert 0 <= end.at - t0 < 5
        # A close with the body unread is a reset on plain TCP.
        assert end.reason.startswith('inputs channel (127.0.0.1:')
        assert 'the peer closed the connection' in end.reason or \
            'the connection broke' in end.reason
        assert isinstance(end.error, link.SpiceClosed)
        assert s.ended('main') is None
        with pytest.raises(link.SpiceClosed, match='it ended'):
            s.key(0x1c)
        assert s.wait_ended('main', 0.2) is None


def test_key_wants_a_plain_make_code(server_factory):
    srv = server_factory()
    with open_session(srv) as s:
        with pytest.raises(ValueError):
            s.key(0x9c)


def test_garbled_reply(server_factory):
    srv = server_factory(behaviour='garbled')
    t0 = time.monotonic()
    with pytest.raises(link.SpiceLinkError) as e:
        open_session(srv)
    assert time.monotonic() - t0 < 3
    assert str(e.value) == (
        "main channel (127.0.0.1:%d): its link reply: starts with b'HTTP', "
        "not the SPICE magic REDQ" % srv.port)
    assert e.value.channel == 'main'


@pytest.mark.parametrize('code,name', [(7, 'PERMISSION_DENIED'),
                                       (5, 'NEED_SECURED'),
                                       (4, 'VERSION_MISMATCH')])
def test_link_error_code_is_named(server_factory, code, name):
    srv = server_factory(behaviour='link_error', link_error_code=code)
    with pytest.raises(link.SpiceLinkError) as e:
        open_session(srv)
    assert e.value.code == code and e.value.code_name == name
    assert 'refused the main link' in str(e.value)
    assert name in str(e.value)


def test_refused_ticket(server_factory):
    srv = server_factory(behaviour='bad_ticket')
    with pytest.raises(link.SpiceLinkError) as e:
        open_session(srv)
    assert e.value.code == 7
    assert 'refused the ticket on the main channel' in str(e.value)
    assert TICKET not in str(e.value)


def test_server_without_mini_header(server_factory):
    srv = server_factory(behaviour='no_mini')
    with pytest.raises(link.SpiceLinkError, match='does not offer '
                       'MINI_HEADER'):
        open_session(srv)


def test_eof_mid_message(server_factory):
    srv = server_factory(behaviour='eof_mid')
    ch = link.Channel.connect('127.0.0.1', srv.port, link.ChannelType.MAIN,
                              TICKET, timeout=5)
    try:
        with pytest.raises(link.SpiceClosed) as e:
            ch.read_message(5)
    finally:
        ch.close()
    assert 'the peer closed the connection after 16 of the 106 bytes of ' \
        'message type 103 (init)' in str(e.value)
    assert e.value.partial.startswith('16 of the 106')


def test_eof_mid_message_in_a_session(server_factory):
    srv = server_factory(behaviour='eof_mid')
    with pytest.raises(link.SpiceClosed) as e:
        open_session(srv)
    assert 'ended before a message of type 103' in str(e.value)
    assert '16 of the 106 bytes' in str(e.value)


def test_huge_header_is_garbled_not_awaited(server_factory):
    srv = server_factory(behaviour='huge_header')
    ch = link.Channel.connect('127.0.0.1', srv.port, link.ChannelType.MAIN,
                              TICKET, timeout=5)
    try:
        t0 = time.monotonic()
        with pytest.raises(link.SpiceLinkError, match='garbled stream'):
            ch.read_message(5)
        assert time.monotonic() - t0 < 2
    finally:
        ch.close()


def test_silent_server_hits_the_deadline(server_factory):
    srv = server_factory(behaviour='silent')
    t0 = time.monotonic()
    with pytest.raises(link.SpiceTimeout) as e:
        open_session(srv, timeout=0.5)
    took = time.monotonic() - t0
    assert 0.4 < took < 2.5, took
    assert 'timed out waiting for the link reply header: 0 of 16 bytes' \
        in str(e.value)
    assert isinstance(e.value, errors.HarnessTimeout)


def test_reply_stalling_mid_way_hits_the_deadline(server_factory):
    srv = server_factory(behaviour='short_reply')
    with pytest.raises(link.SpiceTimeout) as e:
        open_session(srv, timeout=0.5)
    assert 'timed out waiting for the link reply: 10 of 182 bytes ' \
        'arrived' in str(e.value)


def test_silent_after_link_hits_the_deadline(server_factory):
    srv = server_factory(behaviour='silent_after_link')
    t0 = time.monotonic()
    with pytest.raises(link.SpiceTimeout) as e:
        open_session(srv, timeout=0.5)
    assert time.monotonic() - t0 < 2.5
    assert 'no message of type 103 within 0.5 s' in str(e.value)


def test_read_message_deadline():
    a, b = socket.socketpair()
    ch = link.Channel(a, link.ChannelType.INPUTS)
    try:
        b.sendall(struct.pack('<HI', 101, 2) + b'\0')
        with pytest.raises(link.SpiceTimeout) as e:
            ch.read_message(0.3)
        assert 'arrived: 7 of the 8 bytes of message type 101 (init)' \
            in str(e.value)
        b.sendall(b'\0')
        m = ch.read_message(1)
        assert (m.type, m.body) == (101, b'\0\0')
        assert ch.poll(0.1) is None
    finally:
        ch.close()
        b.close()


def test_messages_in_one_read_and_the_client_size_limit():
    a, b = socket.socketpair()
    ch = link.Channel(a, link.ChannelType.MAIN, max_message=100)
    try:
        b.sendall(msg(3, b'\1' * 8) + msg(4, b'\2' * 12) + msg(103, b'x' * 99)
                  + struct.pack('<HI', 104, 101))
        assert [(m.type, m.body) for m in (ch.read_message(1),
                                           ch.read_message(1))] == [
            (3, b'\1' * 8), (4, b'\2' * 12)]
        assert ch.read_message(1).size == 99
        # The header alone is enough: its 101 bytes are not awaited.
        with pytest.raises(link.SpiceLinkError, match='message of type 104 '
                           r'\(channels_list\) of 101 bytes, more than the '
                           '100'):
            ch.read_message(1)
    finally:
        ch.close()
        b.close()
    a, b = socket.socketpair()
    ch = link.Channel(a, link.ChannelType.MAIN, max_message=100)
    try:
        b.sendall(msg(5, b'y' * 150))     # whole in one read: refused too
        with pytest.raises(link.SpiceLinkError, match='of 150 bytes'):
            ch.read_message(1)
    finally:
        ch.close()
        b.close()


def test_nobody_listening():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(link.SpiceClosed, match='cannot connect to '
                       '127.0.0.1:%d for the main channel' % port):
        link.Session.open('127.0.0.1', port, TICKET, timeout=2)


def test_closed_session_never_hangs(server_factory):
    srv = server_factory()
    s = open_session(srv)
    s.close()
    s.close()
    with pytest.raises(link.SpiceClosed):
        s.send('inputs', 101, b'\0\0\0\0')


# -------------------------------------------------------------------- TLS


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, 'US'),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'KB E2E'),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, issuer, key, signer, ca, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                        critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(signer, hashes.SHA256())


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope='module')
def tls_material(tmp_path_factory):
    import ipaddress
    d = tmp_path_factory.mktemp('tls')
    out = {}
    for tag in ('ca', 'other'):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        out[tag] = (key, _cert(_name('ca-' + tag), _name('ca-' + tag), key,
                               key, True))
    ca_key, ca = out['ca']
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = _cert(_name('kb-proxy'), ca.subject, leaf_key, ca_key, False,
                 san=[x509.IPAddress(ipaddress.ip_address('127.0.0.1'))])
    cert_path, key_path = d / 'cert.pem', d / 'key.pem'
    cert_path.write_text(_pem(leaf))
    key_path.write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return {'ctx': ctx, 'ca': _pem(ca), 'other_ca': _pem(out['other'][1])}


def _vv(port, ca=None, host_subject=None, tls=True):
    lines = ['[virt-viewer]', 'type=spice', 'host=127.0.0.1', 'port=1',
             'password=%s' % TICKET,
             'title=c via proxy session ID abcdefabcdef']
    if tls:
        lines.append('tls-port=%d' % port)
    else:
        lines[3] = 'port=%d' % port
    if ca:
        lines.append('ca=%s' % ca.replace('\n', '\\n'))
    if host_subject:
        lines.append('host-subject=%s' % host_subject)
    return '\n'.join(lines) + '\n'


def test_tls_with_pinned_subject(server_factory, tls_material):
    srv = server_factory(tls_ctx=tls_material['ctx'])
    vv = _vv(srv.port, tls_material['ca'], 'C=US,O=KB E2E,CN=kb-proxy')
    with link.Session.from_vv(vv, timeout=5) as s:
        assert s.session_id == SESSION_ID
        assert s.tls.host_subject == 'C=US,O=KB E2E,CN=kb-proxy'
        s.key(0x1c, gap=0)
        assert srv.wait_messages(srv.conn_of(3), 2)[0] == (
            101, 4, b'\x1c\0\0\0')


def test_tls_host_name_checked_without_subject(server_factory,
                                               tls_material):
    srv = server_factory(tls_ctx=tls_material['ctx'])
    with link.Session.from_vv(_vv(srv.port, tls_material['ca']),
                              timeout=5) as s:
        assert s.session_id == SESSION_ID


def test_tls_wrong_subject_refused(server_factory, tls_material):
    srv = server_factory(tls_ctx=tls_material['ctx'])
    vv = _vv(srv.port, tls_material['ca'], 'C=US,O=KB E2E,CN=someone-else')
    with pytest.raises(link.SpiceLinkError) as e:
        link.Session.from_vv(vv, timeout=5)
    assert 'C=US,O=KB E2E,CN=kb-proxy is not the pinned host subject ' \
        'C=US,O=KB E2E,CN=someone-else' in str(e.value)


def test_tls_wrong_ca_refused(server_factory, tls_material):
    srv = server_factory(tls_ctx=tls_material['ctx'])
    vv = _vv(srv.port, tls_material['other_ca'], 'C=US,O=KB E2E,CN=kb-proxy')
    with pytest.raises(link.SpiceLinkError, match='not trusted'):
        link.Session.from_vv(vv, timeout=5)


def test_vv_with_tls_port_needs_ca():
    with pytest.raises(errors.VVError, match='no ca'):
        link.Session.from_vv(_vv(1))


def test_vv_without_tls_links_plain(server_factory):
    srv = server_factory()
    with link.Session.from_vv(_vv(srv.port, tls=False), timeout=5) as s:
        assert s.tls is None and s.session_id == SESSION_ID


def test_bad_ca_pem():
    with pytest.raises(link.SpiceLinkError, match='not a usable PEM'):
        link.TLSConfig('-----BEGIN CERTIFICATE-----\nnope\n').context()


# ------------------------------------------------ the story's decisions

V = pr.METRIC_FIREWALL + \
    '{action="%s",channel="inputs",direction="client_to_server",' \
    'rule="%s"}'


def test_verdicts_parsed_from_series():
    delta = {V % ('enforced', 'size_cap'): 1.0,
             V % ('observed', 'disallowed_type'): 2.0,
             pf.METRIC_BYTES_C2S: 126.0}
    assert pf.verdicts(delta) == {
        ('enforced', 'inputs', 'client_to_server', 'size_cap'): 1.0,
        ('observed', 'inputs', 'client_to_server', 'disallowed_type'): 2.0}


@pytest.mark.parametrize('mode,action,ok', [
    ('enforce', 'enforced', True), ('enforce', 'observed', False),
    ('warn', 'observed', True), ('warn', 'enforced', False)])
def test_judge_verdict_per_mode(mode, action, ok):
    got, message = pf.judge_verdict(mode, {V % (action, 'size_cap'): 1.0})
    assert got is ok
    assert 'want +1' in message


def test_judge_verdict_refuses_no_verdict_two_and_extra_rules():
    assert not pf.judge_verdict('enforce', {})[0]
    assert not pf.judge_verdict('enforce',
                                {V % ('enforced', 'size_cap'): 2.0})[0]
    assert not pf.judge_verdict('warn', {
        V % ('observed', 'size_cap'): 1.0,
        V % ('enforced', 'size_cap'): 1.0})[0]
    ok, message = pf.judge_verdict('enforce', {
        V % ('enforced', 'size_cap'): 1.0,
        V % ('enforced', 'disallowed_type'): 1.0})
    assert not ok and 'disallowed_type +1' in message


def test_judge_no_verdict():
    assert pf.judge_no_verdict({pf.METRIC_BYTES_C2S: 10.0})[0]
    assert not pf.judge_no_verdict({V % ('observed', 'size_cap'): 1})[0]


@pytest.mark.parametrize('mode,delta,ok', [
    ('enforce', 0, True), ('enforce', 126, True), ('enforce', 5006, False),
    ('warn', 5006, True), ('warn', 5132, True), ('warn', 0, False),
    ('warn', 5005, False)])
def test_judge_forwarding(mode, delta, ok):
    got, message = pf.judge_forwarding(mode, delta, 5006)
    assert got is ok
    assert '%d bytes' % delta in message


def test_judge_closed():
    assert pf.judge_closed(0.06, 5.0, 'EOF')[0]
    ok, message = pf.judge_closed(None, 5.0)
    assert not ok and 'still open 5.0 s' in message
    assert not pf.judge_closed(6.0, 5.0)[0]


def _audit(*entries):
    return [{'channel': c, 'message': m, 'session_id': 's1'}
            for c, m in entries]


def test_expected_audit_lines():
    assert pf.expected_audit('enforce') == 'Firewall verdicts this ' \
        'connection: size_cap (enforced=1, observed=0)'
    assert pf.expected_audit('warn').endswith('(enforced=0, observed=1)')


def test_judge_audit():
    base = [('main', 'Channel created'), ('inputs', 'Channel created')]
    enforce = _audit(*base, ('inputs', pf.expected_audit('enforce')))
    warn = _audit(*base, ('inputs', pf.expected_audit('warn')))
    assert pf.judge_audit('enforce', enforce, 's1')[0]
    assert pf.judge_audit('warn', warn, 's1')[0]
    assert not pf.judge_audit('enforce', warn, 's1')[0]
    assert not pf.judge_audit('warn', enforce, 's1')[0]
    ok, message = pf.judge_audit('enforce', _audit(*base), 's1')
    assert not ok and 'firewall entries: none' in message
    assert not pf.judge_audit('enforce', _audit(
        ('main', pf.expected_audit('enforce'))), 's1')[0]
    assert not pf.judge_audit('enforce', enforce + _audit(
        ('inputs', pf.expected_audit('enforce'))), 's1')[0]


def test_judge_no_key():
    assert pf.judge_no_key(0x3cbae8ad, 0x3cbae8ad)[0]
    ok, message = pf.judge_no_key(0x3cbae8ad, 0x1)
    assert not ok and '3cbae8ad' in message and '00000001' in message


def test_closer_from_logs():
    qemu = ['qemu-system-x86_64: warning: Spice: inputs:0 (0x5): error: '
            'too large incoming message']
    proxy = ['WARN kerbside_proxy::relay: policy header check verdict '
             'Terminate; ending relay channel="inputs"']
    assert pf.closer(qemu, []) == 'qemu'
    assert pf.closer([], proxy) == 'proxy'
    assert pf.closer([], ['relay ended']) == 'unknown'


def test_mode_effect_notes():
    warn = pf.mode_effect('warn', ['observed'], 'qemu', 5006, 5006, 0.06,
                          True)
    assert 'forwarded to qemu' in warn['seen']
    assert 'forward-and-log held for the proxy' in \
        warn['against_the_words']
    assert 'lost its inputs channel' in warn['against_the_words']
    assert pf.QEMU_TOO_LARGE in warn['against_the_words']
    assert 'forward-and-log' in warn['kerbside_says']
    enforce = pf.mode_effect('enforce', ['enforced'], 'proxy', 0, 5006,
                             0.06, True)
    assert 'was not forwarded' in enforce['seen']
    assert 'forwarded nothing' in enforce['against_the_words']
    odd = pf.mode_effect('warn', ['enforced'], 'proxy', 0, 5006, 0.06, True)
    assert 'did not hold' in odd['against_the_words']


def test_story_refuses_bad_arguments():
    with pytest.raises(ValueError, match='enforce, warn'):
        pf.firewall_message_rules(None, None, None, 'off')
    with pytest.raises(ValueError, match='more than the 4096'):
        pf.firewall_message_rules(None, None, None, 'warn', oversize=4096)


# ------------------------------------- the story end to end, on fakes


class FakeProxy:
    """What the story reads from Kerbside, driven by a FakeSpiceServer
    that plays the proxy in `mode`: counters, an audit trail, logs, and
    the guest's keypress chain. `fault` breaks one thing the story
    checks (FAULTS).
    """

    def __init__(self, mode, guest, fault=None):
        self.mode = mode
        self.guest = guest
        self.fault = fault
        self.metrics_ = {pf.METRIC_BYTES_C2S: 0.0}
        self.audit_ = [{'channel': None, 'session_id': 'abcdefabcdef',
                        'message': pr.AUDIT_TOKEN}]
        self.calls = []
        self.srv = None

    def _count(self, key, n=1):
        self.metrics_[key] = self.metrics_.get(key, 0) + n

    def _key(self):
        self.guest.keypress = (self.guest.keypress * 31 + 7) & 0xffffffff

    def on_inputs(self, server, conn, msg_type, size):
        fault = self.fault
        if size <= 4096:
            self._count(pf.METRIC_BYTES_C2S, 6 + size)
            if fault == 'verdict_on_small':
                self._count(V % ('enforced', 'size_cap'))
            if msg_type == link.MSGC_INPUTS_KEY_DOWN and \
                    fault != 'drops_keys':
                self._key()
            return None
        forwarded = self.mode == 'warn' or fault in (
            'forwards_in_enforce', 'no_verdict')
        if forwarded:
            self._count(pf.METRIC_BYTES_C2S, 6 + size)
        if fault != 'no_verdict':
            self._count(V % ('enforced' if self.mode == 'enforce'
                             else 'observed', 'size_cap'))
        if fault not in ('no_audit', 'no_verdict'):
            self.audit_.append({
                'channel': 'inputs', 'session_id': 'abcdefabcdef',
                'message': pf.expected_audit(self.mode)})
        if fault == 'keeps_open':
            return None
        if fault == 'delivers_key':
            self._key()
        if forwarded:
            with open(os.path.join(self.guest.artifact_dir,
                                   'qemu.log'), 'a') as f:
                f.write('qemu-system-x86_64: warning: Spice: inputs:0: '
                        'error: too large incoming message\n')
            return 'close_after'
        return 'close'

    # KerbsideAPI's calls the story makes
    def console_vv(self, source, uuid):
        return _vv(self.srv.port, tls=False)

    def metrics(self):
        return dict(self.metrics_)

    def audit(self, source, uuid):
        return list(self.audit_)

    def call_log(self):
        return []


class FakeGuest:
    name = 'fake'

    def __init__(self, artifact_dir):
        self.artifact_dir = artifact_dir
        self.keypress = 0
        os.makedirs(artifact_dir, exist_ok=True)
        open(os.path.join(artifact_dir, 'qemu.log'), 'w').close()


class FakeLane:
    log_dir = None

    def __init__(self, guest):
        self.guest = guest
        self.redactor = common_secrets.Redactor()

    def boot_guest(self, image, name=None, banner=None, timeout=None):
        return self.guest

    def console_route(self, guest, route):
        class R:
            source, uuid = 'src', 'uuid-1'
        return R


def _fake_story(tmp_path, monkeypatch, server_factory, lane_mode,
                story_mode, fault=None, **story_kw):
    guest = FakeGuest(str(tmp_path / 'guest'))
    proxy = FakeProxy(lane_mode, guest, fault)
    proxy.srv = server_factory(on_inputs=proxy.on_inputs)
    monkeypatch.setattr(promise_stories, '_screen_keypress',
                        lambda g, path: g.keypress)
    lane = FakeLane(guest)
    run = pr.PromiseRun('fw', 'kerbside', str(tmp_path / 'art'), lane,
                        ['firewall'], api=proxy)
    try:
        pf.firewall_message_rules(run, lane, 'image', story_mode,
                                  **story_kw)
    except BaseException as e:
        run.fail(e)
    run.finish()
    return run


@pytest.mark.parametrize('mode', ['enforce', 'warn'])
def test_story_on_fakes_passes(tmp_path, monkeypatch, server_factory, mode):
    run = _fake_story(tmp_path, monkeypatch, server_factory, mode, mode)
    assert run.passed, run.failure_message()
    assert [c.name for c in run.checks] == list(pf.CHECKS)
    assert run.sessions == ['abcdefabcdef']
    close = run.facts['size_cap_close']
    assert close['closed_by'] == ('qemu' if mode == 'warn' else 'unknown')
    assert close['main_open_after'] is True
    effect = run.facts['firewall_mode_effect']
    assert effect['mode'] == mode


@pytest.mark.parametrize('lane_mode,story_mode', [('warn', 'enforce'),
                                                  ('enforce', 'warn')])
def test_story_on_fakes_fails_on_the_other_mode(
        tmp_path, monkeypatch, server_factory, lane_mode, story_mode):
    run = _fake_story(tmp_path, monkeypatch, server_factory, lane_mode,
                      story_mode)
    assert not run.passed
    assert run.stopped == 'firewall/size_cap_verdict'
    failed = [c for c in run.checks if c.verdict == 'FAIL']
    assert [c.name for c in failed] == ['size_cap_verdict']
    assert 'want +1' in failed[0].message
    assert [c.name for c in run.checks if c.verdict == 'NOT RUN'] == [
        'size_cap_forwarding', 'size_cap_audit',
        'size_cap_no_key_reached_guest']
    # Observed before the first judgement: the report still has them.
    assert run.facts['size_cap_audit_entries'] == [
        'inputs: ' + pf.expected_audit(lane_mode)]
    assert run.facts['keypress_after_oversized'] == \
        run.facts['control']['keypress_after']


# Each check, shown failing on the fault it exists for (and only that
# check failing).
FAULTS = [
    ('drops_keys', 'enforce', 'control_key_reached_guest'),
    ('verdict_on_small', 'enforce', 'control_no_verdict'),
    ('keeps_open', 'warn', 'size_cap_inputs_closed'),
    ('no_verdict', 'enforce', 'size_cap_verdict'),
    ('forwards_in_enforce', 'enforce', 'size_cap_forwarding'),
    ('no_audit', 'enforce', 'size_cap_audit'),
    ('delivers_key', 'warn', 'size_cap_no_key_reached_guest'),
]


@pytest.mark.parametrize('fault,mode,check', FAULTS)
def test_story_on_fakes_catches_each_fault(tmp_path, monkeypatch,
                                           server_factory, fault, mode,
                                           check):
    monkeypatch.setattr(pf, 'KEY_BOUND_S', 0.5)
    monkeypatch.setattr(pf, 'METRIC_BOUND_S', 0.3)
    monkeypatch.setattr(pf, 'AUDIT_BOUND_S', 0.5)
    run = _fake_story(tmp_path, monkeypatch, server_factory, mode, mode,
                      fault=fault, close_bound=0.5)
    assert not run.passed and run.error is None
    failed = [c.name for c in run.checks if c.verdict == 'FAIL']
    assert failed == [check], run.failure_message()
    assert run.stopped == '%s/%s' % (pf.promise_of(check), check)


def test_every_check_has_a_fault():
    assert sorted(c for _, _, c in FAULTS) == sorted(pf.CHECKS)
