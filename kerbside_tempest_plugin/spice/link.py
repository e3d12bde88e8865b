"""A small SPICE client link layer: link, ticket, mini-header framing.

What a SPICE client says before and around its first messages, enough to
link a main and an inputs channel (through the Kerbside proxy or straight
to qemu), answer the server's SET_ACK and PING, and put a message of our
choosing on the wire: `Channel.send(msg_type, payload, declared_size=)`
may declare a size other than the payload's, which no real client does.

The wire (link header and message, link reply, ticket, mini headers) is
spice.wire's; this module adds what a client does with it:

- a SpiceLinkMess with connection_id 0 for main and, for the other
  channels, the session id from MAIN_INIT;
- with AUTH_SELECTION on both sides it names AUTH_SPICE, then sends the
  ticket RSA-OAEP/SHA-1 encrypted with the reply's key and a trailing NUL;
- it speaks mini headers only: Kerbside's proxy refuses a client
  without AUTH_SELECTION and MINI_HEADER (docs/contracts/kerbside.md
  §7.3). What arrives is cut into messages by a `wire.Framer`.

TLS is verified against the CA the caller gives (a .vv's `ca`): with a
`host_subject` the certificate's subject is pinned attribute by attribute
and the host name is not checked (what ryll and spice-gtk do); without
one the host name must match the certificate.

Every wait has a deadline. A peer that is not a SPICE server, answers
garbage, refuses the link, closes mid-message or says nothing gives a
SpiceLinkError (SpiceClosed, SpiceTimeout) whose message says what was
awaited and what came instead; never a hang, never a bare socket error.
The ticket never appears in an error or a log.
"""

import collections
import dataclasses
import enum
import socket
import ssl
import struct
import threading
import time
import typing

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.spice import wire

# The wire, as spice.wire has it.
MAGIC = wire.MAGIC
PUBKEY_BYTES = wire.PUBKEY_BYTES
LINK_HEADER, LINK_MESS = wire.LINK_HEADER, wire.LINK_MESS
LINK_REPLY, MINI_HEADER = wire.LINK_REPLY, wire.MINI_HEADER
LinkReply = wire.LinkReply
has_cap = wire.has_cap
U32 = struct.Struct('<I')
# SPICE_MAX_PASSWORD_LENGTH.
MAX_TICKET = 60

# The largest message this client accepts from a server (main and inputs
# carry small messages; Kerbside's relay guards at 16 MiB).
MAX_MESSAGE = 16 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0
# How long a reader holds the socket for one read: a writer waits at
# most this long for its turn (an SSL object may not be read and written
# at once from two threads).
POLL_S = 0.05
RECV_CHUNK = 65536


ChannelType = enum.IntEnum('ChannelType', [
    (name.upper(), number) for number, name in wire.CHANNELS.items()],
    module=__name__)


class LinkErr(enum.IntEnum):
    OK = 0
    ERROR = 1
    INVALID_MAGIC = 2
    INVALID_DATA = 3
    VERSION_MISMATCH = 4
    NEED_SECURED = 5
    NEED_UNSECURED = 6
    PERMISSION_DENIED = 7
    BAD_CONNECTION_ID = 8
    CHANNEL_NOT_AVAILABLE = 9


class CommonCap(enum.IntEnum):
    AUTH_SELECTION = wire.CAP_AUTH_SELECTION
    AUTH_SPICE = wire.CAP_AUTH_SPICE
    AUTH_SASL = wire.CAP_AUTH_SASL
    MINI_HEADER = wire.CAP_MINI_HEADER


# What this client offers: ticket auth, chosen explicitly, and mini
# headers.
CLIENT_COMMON_CAPS = (CommonCap.AUTH_SELECTION, CommonCap.AUTH_SPICE,
                      CommonCap.MINI_HEADER)

# The messages this client reads or answers (every channel has SET_ACK,
# PING, ACK_SYNC, ACK and PONG).
MSG_SET_ACK = wire.message_type('main', wire.S2C, 'set_ack')
MSG_PING = wire.message_type('main', wire.S2C, 'ping')
MSGC_ACK_SYNC = wire.message_type('main', wire.C2S, 'ack_sync')
MSGC_ACK = wire.message_type('main', wire.C2S, 'ack')
MSGC_PONG = wire.message_type('main', wire.C2S, 'pong')
MSG_MAIN_INIT = wire.message_type('main', wire.S2C, 'init')
MSG_INPUTS_INIT = wire.message_type('inputs', wire.S2C, 'init')
MSGC_INPUTS_KEY_DOWN = wire.INPUTS_KEY_DOWN
MSGC_INPUTS_KEY_UP = wire.INPUTS_KEY_UP


def link_error_name(code: typing.Optional[int]) -> typing.Optional[str]:
    """SPICE_LINK_ERR_<name> of `code`, or 'unknown code N'."""
    if code is None:
        return None
    try:
        return LinkErr(code).name
    except ValueError:
        return 'unknown code %d' % code


def message_name(channel_type: int, msg_type: int,
                 direction: str = wire.S2C) -> str:
    """'103 (init)': the type and spice.wire's name for it."""
    return '%d (%s)' % (msg_type, wire.message_name(
        wire.channel_name(channel_type), direction, msg_type))


# ----------------------------------------------------------------- errors


class SpiceLinkError(errors.HarnessError):
    """A SPICE link or channel failed. `code` is the SpiceLinkErr the
    peer sent (None when it sent none: a garbled or closed peer), named
    in `code_name` and in the message; `channel` names the channel.
    """

    def __init__(self, message: str, code: typing.Optional[int] = None,
                 channel: typing.Optional[str] = None):
        self.code = code
        self.code_name = link_error_name(code)
        self.channel = channel
        if code is not None:
            message = '%s (SPICE link error %d, %s)' % (message, code,
                                                        self.code_name)
        super().__init__(message)


class SpiceClosed(SpiceLinkError):
    """The peer closed the connection (or it broke). `partial` says what
    of a message had arrived when it did ('' at a message boundary).
    """

    def __init__(self, message: str, channel: typing.Optional[str] = None,
                 partial: str = ''):
        self.partial = partial
        super().__init__(message, channel=channel)


class SpiceTimeout(SpiceLinkError, errors.HarnessTimeout):
    """A SPICE wait ran out; the message says what was awaited and what
    had arrived.
    """


# ------------------------------------------------------------- the link


@dataclasses.dataclass(frozen=True)
class Message:
    """One message received: its type, body and when (time.monotonic)."""
    type: int
    body: bytes
    at: float

    @property
    def size(self) -> int:
        return len(self.body)


def caps_words(bits: typing.Iterable[int]) -> typing.Tuple[int, ...]:
    """Capability bit numbers as the u32 words of a link message; no
    words for no bits.
    """
    bits = list(bits)
    return wire.caps_words(bits) if bits else ()


def pack_link_mess(channel_type: int, connection_id: int = 0,
                   channel_id: int = 0,
                   common_caps: typing.Iterable[int] = CLIENT_COMMON_CAPS,
                   channel_caps: typing.Iterable[int] = ()) -> bytes:
    """The link header and SpiceLinkMess a client opens a channel with
    (the caps as bit numbers).
    """
    return wire.pack_link_mess(channel_type, connection_id, channel_id,
                               caps_words(common_caps),
                               caps_words(channel_caps))


def _framing(parse, data: bytes, what: str, channel: typing.Optional[str]):
    try:
        return parse(data, what)
    except wire.WireError as e:
        raise SpiceLinkError(str(e), channel=channel) from None


def parse_link_header(data: bytes, channel: typing.Optional[str] = None
                      ) -> typing.Tuple[int, int, int]:
    """(major, minor, size) of a 16-byte link header; SpiceLinkError for
    a peer that is not a SPICE server, speaks another major version or
    announces an absurd size.
    """
    size = _framing(wire.read_link_header, data, 'its link reply', channel)
    _magic, major, minor, _size = LINK_HEADER.unpack_from(data)
    return major, minor, size


def parse_link_reply(body: bytes, channel: typing.Optional[str] = None
                     ) -> LinkReply:
    """The SpiceLinkReply after the header. A reply whose error is not OK
    is returned with the error alone (the caller raises with the code);
    a truncated or inconsistent OK reply is a SpiceLinkError.
    """
    return _framing(wire.parse_link_reply, body, 'garbled link reply',
                    channel)


def encrypt_ticket(pub_key_der: bytes, ticket: str,
                   channel: typing.Optional[str] = None) -> bytes:
    """The ticket (with its trailing NUL) RSA-OAEP/SHA-1 encrypted with
    the server's link key.
    """
    try:
        from cryptography.hazmat.primitives.asymmetric import padding
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # pragma: no cover - tempest brings it
        raise SpiceLinkError('the python package cryptography is needed to '
                             'encrypt a SPICE ticket', channel=channel)
    raw = ticket.encode('utf-8') + b'\0'
    if len(raw) > MAX_TICKET + 1:
        raise SpiceLinkError('a SPICE ticket is at most %d bytes, this one '
                             'is %d' % (MAX_TICKET, len(raw) - 1),
                             channel=channel)
    try:
        key = serialization.load_der_public_key(pub_key_der)
        return key.encrypt(raw, padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA1()),
            algorithm=hashes.SHA1(), label=None))
    except (ValueError, TypeError, AttributeError) as e:
        raise SpiceLinkError('garbled link reply: its public key is not an '
                             'RSA key (%s)' % (str(e) or type(e).__name__),
                             channel=channel) from None


def pack_message(msg_type: int, payload: bytes = b'',
                 declared_size: typing.Optional[int] = None) -> bytes:
    """A mini-header message. `declared_size` (default: the payload's
    length) is what the header claims, whatever the payload is.
    """
    return wire.pack_message(msg_type, payload, declared_size=declared_size)


# -------------------------------------------------------------------- TLS


def parse_subject(text: str) -> typing.List[typing.Tuple[str, str]]:
    """A comma-joined subject ('C=US,O=Example\\, Inc,CN=proxy') as
    [(attribute, value)]; a backslash escapes the next character.
    """
    parts, cur, esc = [], '', False
    for ch in text:
        if esc:
            cur += ch
            esc = False
        elif ch == '\\':
            esc = True
        elif ch == ',':
            parts.append(cur)
            cur = ''
        else:
            cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        key, sep, value = p.partition('=')
        if not sep or not key.strip():
            raise ValueError('not an attribute=value pair: %r' % p)
        out.append((key.strip().upper(), value.strip()))
    return out


def certificate_subject(der: bytes) -> typing.List[typing.Tuple[str, str]]:
    """The subject of a DER certificate as [(attribute, value)], in the
    certificate's order, attributes as RFC 4514 names (C, O, CN, ...).
    """
    from cryptography import x509
    cert = x509.load_der_x509_certificate(der)
    return [(attr.rfc4514_attribute_name.upper(), str(attr.value))
            for rdn in cert.subject.rdns for attr in rdn]


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    """How to verify a SPICE server's certificate: the CA (PEM), and
    either a pinned subject or the host name checked.
    """
    ca_pem: str
    host_subject: typing.Optional[str] = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = not self.host_subject
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cadata=self.ca_pem)
        except (ssl.SSLError, ValueError, TypeError) as e:
            raise SpiceLinkError('the CA given to verify the SPICE server '
                                 'is not a usable PEM certificate: %s' % e)
        return ctx

    def check_subject(self, der: bytes, channel: str) -> None:
        if not self.host_subject:
            return
        try:
            want = parse_subject(self.host_subject)
        except ValueError as e:
            raise SpiceLinkError('the pinned host subject %r does not parse:'
                                 ' %s' % (self.host_subject, e),
                                 channel=channel)
        got = certificate_subject(der)
        if got != want:
            raise SpiceLinkError(
                'the server certificate\'s subject %s is not the pinned '
                'host subject %s' % (','.join('%s=%s' % kv for kv in got),
                                     self.host_subject), channel=channel)


# ---------------------------------------------------------------- channel


class Channel:
    """One linked SPICE channel over a connected socket.

    Reads belong to one thread at a time (a Session's reader, or the
    caller); `send` may come from any thread.
    """

    def __init__(self, sock: socket.socket, channel_type: int,
                 peer: str = '', max_message: int = MAX_MESSAGE):
        self._sock = sock
        self.channel_type = channel_type
        self.name = wire.channel_name(channel_type)
        self.peer = peer
        self.max_message = max_message
        self._lock = threading.RLock()
        self._buf = bytearray()     # read, not yet framed (or the link's)
        neg = wire.Negotiation()
        neg.mess = wire.LinkMess(0, channel_type, 0, (), ())
        self._framer = wire.Framer(wire.S2C, neg, skip_link=True)
        self._units: typing.Deque[wire.Unit] = collections.deque()
        self._closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.link_reply: typing.Optional[LinkReply] = None

    def __repr__(self):
        return '<spice %s channel to %s>' % (self.name, self.peer)

    @property
    def label(self) -> str:
        return '%s channel (%s)' % (self.name, self.peer) if self.peer \
            else '%s channel' % self.name

    # -- connecting ------------------------------------------------------
    @classmethod
    def connect(cls, host: str, port: int, channel_type: int, ticket: str,
                connection_id: int = 0, channel_id: int = 0,
                tls: typing.Optional[TLSConfig] = None,
                timeout: float = DEFAULT_TIMEOUT,
                max_message: int = MAX_MESSAGE) -> 'Channel':
        """Connect (TLS when `tls`), link and authenticate, all within
        `timeout` seconds; returns the linked Channel.
        """
        deadline = time.monotonic() + timeout
        peer = '%s:%s%s' % (host, port, ' TLS' if tls else '')
        name = wire.channel_name(channel_type)
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except socket.timeout:
            raise SpiceTimeout('no TCP connection to %s within %.1f s for '
                               'the %s channel' % (peer, timeout, name),
                               channel=name) from None
        except OSError as e:
            raise SpiceClosed('cannot connect to %s for the %s channel: %s'
                              % (peer, name, e), channel=name) from None
        sock = raw
        try:
            if tls is not None:
                sock = _tls_wrap(raw, host, tls, deadline, name)
            ch = cls(sock, channel_type, peer, max_message)
            ch._link(ticket, connection_id, channel_id, deadline)
            return ch
        except BaseException:
            _close_quietly(sock)
            raise

    def _link(self, ticket: str, connection_id: int, channel_id: int,
              deadline: float) -> None:
        self._sendall(pack_link_mess(self.channel_type, connection_id,
                                     channel_id), deadline, 'the link message')
        head = self._read_exact(LINK_HEADER.size, deadline,
                                'the link reply header')
        try:
            _, _, size = parse_link_header(head, self.name)
        except SpiceLinkError as e:
            raise self._labelled(e) from None
        body = self._read_exact(size, deadline, 'the link reply')
        try:
            reply = parse_link_reply(body, self.name)
        except SpiceLinkError as e:
            raise self._labelled(e) from None
        if reply.error != LinkErr.OK:
            raise SpiceLinkError('%s refused the %s link' % (
                self.peer or 'the server', self.name), code=reply.error,
                channel=self.name)
        if not reply.has_common(CommonCap.MINI_HEADER):
            raise SpiceLinkError(
                '%s does not offer MINI_HEADER (common caps %s); this client '
                'speaks only mini headers' % (self.peer or 'the server',
                                              list(reply.common_caps)),
                channel=self.name)
        self.link_reply = reply
        if reply.has_common(CommonCap.AUTH_SELECTION):
            self._sendall(U32.pack(CommonCap.AUTH_SPICE), deadline,
                          'the auth mechanism')
        self._sendall(encrypt_ticket(reply.pub_key, ticket, self.name),
                      deadline, 'the ticket')
        result = U32.unpack(self._read_exact(U32.size, deadline,
                                             'the ticket\'s verdict'))[0]
        if result != LinkErr.OK:
            raise SpiceLinkError('%s refused the ticket on the %s channel'
                                 % (self.peer or 'the server', self.name),
                                 code=result, channel=self.name)

    def _labelled(self, e: SpiceLinkError) -> SpiceLinkError:
        """A parse error (which knows no peer) naming this channel."""
        return SpiceLinkError('%s: %s' % (self.label, e), channel=self.name)

    # -- low-level I/O ---------------------------------------------------
    def _pending(self) -> str:
        """What of the next message has arrived, for an error message."""
        return self._framer.partial()

    def _recv_some(self, timeout: float) -> bool:
        """Read what arrives within `timeout` into the buffer: True if
        something did. SpiceClosed when the peer closed or the
        connection broke.
        """
        with self._lock:
            if self._closed:
                raise SpiceClosed('the %s was closed by this client'
                                  % self.label, channel=self.name)
            try:
                self._sock.settimeout(max(timeout, 0.001))
                data = self._sock.recv(RECV_CHUNK)
            except (socket.timeout, ssl.SSLWantReadError,
                    BlockingIOError):
                return False
            except (ssl.SSLError, OSError) as e:
                raise self._closed_error('the connection broke (%s)' % e)
        if not data:
            raise self._closed_error('the peer closed the connection')
        self._buf += data
        self.bytes_in += len(data)
        return True

    def _closed_error(self, what: str, awaiting: str = '') -> SpiceClosed:
        partial = self._pending()
        detail = awaiting or (' after %s' % partial if partial
                              else ' at a message boundary')
        return SpiceClosed('%s: %s%s' % (self.label, what, detail),
                           channel=self.name, partial=partial)

    def _read_exact(self, n: int, deadline: float, what: str) -> bytes:
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SpiceTimeout(
                    '%s: timed out waiting for %s: %d of %d bytes arrived'
                    % (self.label, what, len(self._buf), n),
                    channel=self.name)
            try:
                self._recv_some(min(left, POLL_S * 4))
            except SpiceClosed as e:
                raise SpiceClosed(
                    '%s: the peer closed the connection while this client '
                    'waited for %s (%d of %d bytes arrived)' % (
                        self.label, what, len(self._buf), n),
                    channel=self.name, partial=e.partial) from None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _sendall(self, data: bytes, deadline: float, what: str) -> None:
        with self._lock:
            if self._closed:
                raise SpiceClosed('cannot send %s: the %s was closed by this '
                                  'client' % (what, self.label),
                                  channel=self.name)
            left = deadline - time.monotonic()
            if left <= 0:
                raise SpiceTimeout('%s: no time left to send %s'
                                   % (self.label, what), channel=self.name)
            try:
                self._sock.settimeout(left)
                self._sock.sendall(data)
            except socket.timeout:
                raise SpiceTimeout('%s: sending %s (%d bytes) did not finish '
                                   'in %.1f s' % (self.label, what,
                                                  len(data), left),
                                   channel=self.name) from None
            except (ssl.SSLError, OSError) as e:
                raise SpiceClosed('%s: cannot send %s: the connection is '
                                  'gone (%s)' % (self.label, what, e),
                                  channel=self.name) from None
        self.bytes_out += len(data)

    # -- messages --------------------------------------------------------
    def _take(self) -> typing.Optional[Message]:
        if self._buf:
            try:
                self._units.extend(self._framer.feed(bytes(self._buf)))
            except wire.WireError as e:
                raise SpiceLinkError('%s: garbled stream: %s' % (
                    self.label, e), channel=self.name) from None
            self._buf.clear()
        if self._units:
            unit = self._units.popleft()
            self._check_size(unit.type, len(unit.body))
            return Message(unit.type, unit.body, time.monotonic())
        held = self._framer.held()
        if held is not None:
            self._check_size(*held)
        return None

    def _check_size(self, msg_type: int, size: int) -> None:
        if size > self.max_message:
            raise SpiceLinkError(
                '%s: garbled stream: a header declares a message of type %s '
                'of %d bytes, more than the %d this client accepts' % (
                    self.label, message_name(self.channel_type, msg_type),
                    size, self.max_message), channel=self.name)

    def poll(self, timeout: float) -> typing.Optional[Message]:
        """The next message if one is whole within `timeout`, else None.
        SpiceClosed when the peer closed (saying how much of a message
        had arrived), SpiceLinkError for a garbled stream.
        """
        deadline = time.monotonic() + timeout
        while True:
            msg = self._take()
            if msg is not None:
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._recv_some(min(left, POLL_S))

    def read_message(self, timeout: float) -> Message:
        """The next message; SpiceTimeout if none is whole in time."""
        msg = self.poll(timeout)
        if msg is None:
            partial = self._pending()
            raise SpiceTimeout('%s: no whole message within %.1f s (%s)' % (
                self.label, timeout, 'arrived: %s' % partial if partial
                else 'nothing arrived'), channel=self.name)
        return msg

    def send(self, msg_type: int, payload: bytes = b'',
             declared_size: typing.Optional[int] = None,
             timeout: float = DEFAULT_TIMEOUT) -> int:
        """Send one mini-header message; returns the bytes written.
        `declared_size` makes the header claim another size than the
        payload's.
        """
        data = pack_message(msg_type, payload, declared_size)
        self._sendall(data, time.monotonic() + timeout,
                      'a message of type %s' % message_name(
                          self.channel_type, msg_type, wire.C2S))
        return len(data)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _close_quietly(self._sock)


def _tls_wrap(raw: socket.socket, host: str, tls: TLSConfig,
              deadline: float, name: str) -> ssl.SSLSocket:
    ctx = tls.context()
    raw.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        sock = ctx.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as e:
        raise SpiceLinkError('TLS to %s: the server certificate is not '
                             'trusted: %s' % (host, e.verify_message or e),
                             channel=name) from None
    except socket.timeout:
        raise SpiceTimeout('TLS handshake with %s did not finish in time'
                           % host, channel=name) from None
    except (ssl.SSLError, OSError) as e:
        raise SpiceClosed('TLS handshake with %s failed: %s' % (host, e),
                          channel=name) from None
    try:
        tls.check_subject(sock.getpeercert(binary_form=True), name)
    except BaseException:
        _close_quietly(sock)
        raise
    return sock


def _close_quietly(sock: socket.socket) -> None:
    for fn in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        try:
            fn()
        except OSError:
            pass


# ---------------------------------------------------------------- session


@dataclasses.dataclass(frozen=True)
class ChannelEnd:
    """How and when (time.monotonic, time.time) a channel ended from the
    peer's side.
    """
    channel: str
    at: float
    wall: float
    reason: str
    error: SpiceLinkError


@dataclasses.dataclass(frozen=True)
class Sent:
    channel: str
    type: int
    declared_size: int
    length: int
    at: float


@dataclasses.dataclass
class _Ack:
    generation: int = 0
    window: int = 0
    count: int = 0


class Session:
    """A main channel and (by default) an inputs channel of one SPICE
    session, each with a reader thread that answers SET_ACK (ACK_SYNC,
    then an ACK every window) and PING (PONG), records what arrived and
    records when and why the peer ended the channel.

    `Session.from_vv(text)` links through what a .vv says (TLS with its
    `ca` and `host-subject` when it has a `tls-port`);
    `Session.open(host, port, ticket, tls=None)` links anywhere.
    Use as a context manager, or call close().
    """

    def __init__(self, host: str, port: int, tls: typing.Optional[TLSConfig]
                 = None, timeout: float = DEFAULT_TIMEOUT):
        self.host = host
        self.port = port
        self.tls = tls
        self.timeout = timeout
        self.channels: typing.Dict[str, Channel] = {}
        self.received: typing.Dict[str, typing.List[Message]] = {}
        self.sent: typing.List[Sent] = []
        self.ends: typing.Dict[str, ChannelEnd] = {}
        self.session_id: typing.Optional[int] = None
        self._acks: typing.Dict[str, _Ack] = {}
        self._threads: typing.Dict[str, threading.Thread] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()

    # -- opening ---------------------------------------------------------
    @classmethod
    def from_vv(cls, vv_text: str, timeout: float = DEFAULT_TIMEOUT,
                inputs: bool = True) -> 'Session':
        """Link main (and inputs) as a .vv says: TLS to `tls-port`,
        verified against its `ca` (its `host-subject` pinned), else plain
        to `port`; the `password` is the ticket.
        """
        fields = common_vv.parse_vv(vv_text)
        host = fields.get('host')
        ticket = fields.get('password')
        if not host or ticket is None:
            raise errors.VVError('the .vv has no %s' % (
                'host' if not host else 'password'))
        tls = None
        port = fields.get('tls-port')
        if port:
            ca = (fields.get('ca') or '').replace('\\n', '\n')
            if not ca.strip():
                raise errors.VVError(
                    'the .vv has a tls-port but no ca: this client verifies '
                    'the server against the .vv\'s CA')
            tls = TLSConfig(ca, fields.get('host-subject') or None)
        else:
            port = fields.get('port')
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise errors.VVError('the .vv has no usable port (%r)' % (port,))
        return cls.open(host, port, ticket, tls=tls, timeout=timeout,
                        inputs=inputs)

    @classmethod
    def open(cls, host: str, port: int, ticket: str,
             tls: typing.Optional[TLSConfig] = None,
             timeout: float = DEFAULT_TIMEOUT,
             inputs: bool = True) -> 'Session':
        """Link main, wait for MAIN_INIT (the session id), then link
        inputs with it and wait for INPUTS_INIT: on return the channels
        relay to the guest. Each step within `timeout`.
        """
        s = cls(host, port, tls, timeout)
        try:
            s._add('main', ChannelType.MAIN, ticket, 0)
            init = s.wait_message('main', MSG_MAIN_INIT, timeout)
            if len(init.body) < U32.size:
                raise SpiceLinkError('garbled MAIN_INIT: %d bytes'
                                     % len(init.body), channel='main')
            s.session_id = U32.unpack_from(init.body)[0]
            if inputs:
                s._add('inputs', ChannelType.INPUTS, ticket, s.session_id)
                s.wait_message('inputs', MSG_INPUTS_INIT, timeout)
        except BaseException:
            s.close()
            raise
        return s

    def _add(self, name: str, channel_type: int, ticket: str,
             connection_id: int) -> Channel:
        ch = Channel.connect(self.host, self.port, channel_type, ticket,
                             connection_id=connection_id, tls=self.tls,
                             timeout=self.timeout)
        with self._cond:
            self.channels[name] = ch
            self.received[name] = []
            self._acks[name] = _Ack()
        t = threading.Thread(target=self._reader, args=(name, ch),
                             name='spice-%s' % name, daemon=True)
        self._threads[name] = t
        t.start()
        return ch

    # -- the readers -----------------------------------------------------
    def _reader(self, name: str, ch: Channel) -> None:
        while not self._stop.is_set():
            try:
                msg = ch.poll(0.1)
                if msg is None:
                    continue
                with self._cond:
                    self.received[name].append(msg)
                    self._cond.notify_all()
                self._answer(name, ch, msg)
            except SpiceLinkError as e:
                if not self._stop.is_set():
                    self._ended(name, e)
                return
            except Exception as e:  # never a silent dead reader
                self._ended(name, SpiceLinkError(
                    '%s: the reader failed: %s: %s' % (
                        ch.label, type(e).__name__, e), channel=name))
                return

    def _answer(self, name: str, ch: Channel, msg: Message) -> None:
        ack = self._acks[name]
        if msg.type == MSG_SET_ACK:
            if len(msg.body) < 8:
                raise SpiceLinkError('%s: garbled SET_ACK: %d bytes' % (
                    ch.label, len(msg.body)), channel=name)
            ack.generation, ack.window = struct.unpack_from('<II', msg.body)
            ack.count = 0
            ch.send(MSGC_ACK_SYNC, U32.pack(ack.generation))
            return
        if msg.type == MSG_PING:
            ch.send(MSGC_PONG, msg.body[:12])
        if ack.window:
            ack.count += 1
            if ack.count >= ack.window:
                ack.count = 0
                ch.send(MSGC_ACK)

    def _ended(self, name: str, e: SpiceLinkError) -> None:
        with self._cond:
            if name not in self.ends:
                self.ends[name] = ChannelEnd(name, time.monotonic(),
                                             time.time(), str(e), e)
            self._cond.notify_all()

    # -- waiting ---------------------------------------------------------
    def wait_message(self, name: str, msg_type: int,
                     timeout: float) -> Message:
        """The first message of `msg_type` on channel `name`;
        SpiceTimeout, or the channel's end (SpiceClosed) if it ended
        first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.received.get(name, ()):
                    if m.type == msg_type:
                        return m
                end = self.ends.get(name)
                if end is not None:
                    raise SpiceClosed('the %s channel ended before a message '
                                      'of type %s arrived: %s' % (
                                          name, msg_type, end.reason),
                                      channel=name)
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [m.type for m in self.received.get(name, ())]
                    raise SpiceTimeout(
                        'the %s channel: no message of type %s within %.1f s'
                        ' (received types %s)' % (name, msg_type, timeout,
                                                  got[-20:]), channel=name)
                self._cond.wait(left)

    def wait_ended(self, name: str, timeout: float
                   ) -> typing.Optional[ChannelEnd]:
        """The channel's end if the peer ended it within `timeout`, else
        None.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while name not in self.ends:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self.ends[name]

    def ended(self, name: str) -> typing.Optional[ChannelEnd]:
        with self._cond:
            return self.ends.get(name)

    def types_received(self, name: str) -> typing.List[int]:
        with self._cond:
            return [m.type for m in self.received.get(name, ())]

    # -- sending ---------------------------------------------------------
    def send(self, name: str, msg_type: int, payload: bytes = b'',
             declared_size: typing.Optional[int] = None) -> Sent:
        """Send on channel `name`. SpiceClosed at once when the peer has
        already ended it.
        """
        ch = self.channels.get(name)
        if ch is None:
            raise SpiceLinkError('this session has no %s channel' % name,
                                 channel=name)
        end = self.ended(name)
        if end is not None:
            raise SpiceClosed('cannot send on the %s channel: it ended %.2f s'
                              ' ago: %s' % (name, time.monotonic() - end.at,
                                            end.reason), channel=name)
        n = ch.send(msg_type, payload, declared_size, timeout=self.timeout)
        rec = Sent(name, msg_type, len(payload) if declared_size is None
                   else declared_size, n, time.monotonic())
        with self._cond:
            self.sent.append(rec)
        return rec

    def key(self, scancode: int, gap: float = 0.05) -> None:
        """Press and release a key: KEY_DOWN with its set-1 make code,
        KEY_UP with the break code (make | 0x80), `gap` s apart.
        """
        if not 0 < scancode < 0x80:
            raise ValueError('a plain set-1 make code (1..0x7f), not %r'
                             % (scancode,))
        self.send('inputs', MSGC_INPUTS_KEY_DOWN, U32.pack(scancode))
        time.sleep(gap)
        self.send('inputs', MSGC_INPUTS_KEY_UP, U32.pack(scancode | 0x80))

    # -- the end ---------------------------------------------------------
    def close(self, timeout: float = 2.0) -> None:
        """Stop the readers and close every channel; never raises."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads.values():
            if t is not threading.current_thread():
                t.join(max(deadline - time.monotonic(), 0.01))
        for ch in self.channels.values():
            ch.close()

    def __enter__(self) -> 'Session':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
