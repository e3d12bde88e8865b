"""SPICE framing: the one place in the package that knows SPICE bytes.

Everything that reads or writes SPICE on the wire builds on this module:
the link layer of our own client (`spice.link`), the latency packets
(`loadtest.packets`), the display replay (`spice.draw`) and the fault
relay (`spice.relay`). The facts, from the SPICE protocol (spice-protocol's
spice/protocol.h and spice/enums.h; integers little-endian); the project's
own account is docs/contracts/kerbside.md §7:

- a connection is one channel. The client opens with a 16-byte link
  header (magic `REDQ`, major 2, minor 2, size) and a SpiceLinkMess
  (connection id u32, channel type u8, channel id u8, common and channel
  capability counts u32, caps offset u32, then the words);
- the server answers a link header and a SpiceLinkReply (error u32, a
  162-byte RSA public key, capability counts and offset, the words);
- the client then names its auth mechanism (u32) when both sides offer
  AUTH_SELECTION, and sends the 128-byte encrypted ticket; the server
  answers a u32 link result (0: linked);
- then messages both ways: a 6-byte mini header (type u16, size u32) when
  both sides offer MINI_HEADER, else an 18-byte header (serial u64, type
  u16, size u32, sub-list offset u32), then `size` bytes of body.

`Framer` cuts one direction of one connection into those units as bytes
arrive (from a socket or a capture), so a caller can forward, count or
alter them one by one. Bad bytes give a WireError naming the channel,
the direction and what was expected; never a hang or a bare
struct.error.
"""

import dataclasses
import struct
import typing

from kerbside_tempest_plugin.common import errors

MAGIC = b'REDQ'
VERSION = (2, 2)
LINK_HEADER = struct.Struct('<4sIII')
LINK_MESS = struct.Struct('<IBBIII')
PUBKEY_BYTES = 162
LINK_REPLY = struct.Struct('<I%dsIII' % PUBKEY_BYTES)
MINI_HEADER = struct.Struct('<HI')
FULL_HEADER = struct.Struct('<QHII')
TICKET_BYTES = 128
AUTH_MECHANISM_BYTES = 4
LINK_RESULT_BYTES = 4
# No link message is this big; a size beyond it is garbage, not SPICE.
MAX_LINK = 4096
# A full-screen uncompressed 32-bit draw at 4096x2160 is ~35 MB.
MAX_MESSAGE = 64 * 1024 * 1024

CAP_AUTH_SELECTION = 0
CAP_AUTH_SPICE = 1
CAP_AUTH_SASL = 2
CAP_MINI_HEADER = 3

CHANNELS = {1: 'main', 2: 'display', 3: 'inputs', 4: 'cursor',
            5: 'playback', 6: 'record', 7: 'tunnel', 8: 'smartcard',
            9: 'usbredir', 10: 'port', 11: 'webdav'}
CHANNEL_TYPES = {v: k for k, v in CHANNELS.items()}

# Directions: what the server sends ('s2c') and what the client sends.
S2C, C2S = 's2c', 'c2s'
DIRECTIONS = (S2C, C2S)

_COMMON = {
    S2C: {1: 'migrate', 2: 'migrate_data', 3: 'set_ack', 4: 'ping',
          5: 'wait_for_channels', 6: 'disconnecting', 7: 'notify',
          8: 'list'},
    C2S: {1: 'ack_sync', 2: 'ack', 3: 'pong', 4: 'migrate_flush_mark',
          5: 'migrate_data', 6: 'disconnecting'},
}
_PER_CHANNEL = {
    ('main', S2C): {
        101: 'migrate_begin', 102: 'migrate_cancel', 103: 'init',
        104: 'channels_list', 105: 'mouse_mode', 106: 'multi_media_time',
        107: 'agent_connected', 108: 'agent_disconnected',
        109: 'agent_data', 110: 'agent_token', 111: 'migrate_switch_host',
        112: 'migrate_end', 113: 'name', 114: 'uuid',
        115: 'agent_connected_tokens', 116: 'migrate_begin_seamless',
        117: 'migrate_dst_seamless_ack', 118: 'migrate_dst_seamless_nack'},
    ('main', C2S): {
        101: 'client_info', 102: 'migrate_connected',
        103: 'migrate_connect_error', 104: 'attach_channels',
        105: 'mouse_mode_request', 106: 'agent_start', 107: 'agent_data',
        108: 'agent_token', 109: 'migrate_end',
        110: 'migrate_dst_do_seamless', 111: 'migrate_connected_seamless'},
    ('display', S2C): {
        101: 'mode', 102: 'mark', 103: 'reset', 104: 'copy_bits',
        105: 'inval_list', 106: 'inval_all_pixmaps', 107: 'inval_palette',
        108: 'inval_all_palettes', 122: 'stream_create', 123: 'stream_data',
        124: 'stream_clip', 125: 'stream_destroy',
        126: 'stream_destroy_all', 302: 'draw_fill', 303: 'draw_opaque',
        304: 'draw_copy', 305: 'draw_blend', 306: 'draw_blackness',
        307: 'draw_whiteness', 308: 'draw_invers', 309: 'draw_rop3',
        310: 'draw_stroke', 311: 'draw_text', 312: 'draw_transparent',
        313: 'draw_alpha_blend', 314: 'surface_create',
        315: 'surface_destroy', 316: 'stream_data_sized',
        317: 'monitors_config', 318: 'draw_composite',
        319: 'stream_activate_report', 320: 'gl_scanout_unix',
        321: 'gl_draw'},
    ('display', C2S): {
        101: 'init', 102: 'stream_report', 103: 'preferred_compression',
        104: 'gl_draw_done', 105: 'preferred_video_codec_type'},
    ('inputs', S2C): {101: 'init', 102: 'key_modifiers',
                      111: 'mouse_motion_ack'},
    ('inputs', C2S): {
        101: 'key_down', 102: 'key_up', 103: 'key_modifiers',
        104: 'key_scancode', 111: 'mouse_motion', 112: 'mouse_position',
        113: 'mouse_press', 114: 'mouse_release'},
    ('cursor', S2C): {
        101: 'init', 102: 'reset', 103: 'set', 104: 'move', 105: 'hide',
        106: 'trail', 107: 'inval_one', 108: 'inval_all'},
}

# Display messages that put pixels on a surface.
DISPLAY_DRAWS = frozenset([104, 123, 316, 318] + list(range(302, 314)))
INPUTS_KEY_DOWN, INPUTS_KEY_UP = 101, 102


class WireError(errors.HarnessError):
    """Bytes that are not the SPICE the framer expected."""


def channel_name(channel_type: int) -> str:
    return CHANNELS.get(channel_type, 'type-%d' % channel_type)


def message_name(channel: str, direction: str, msg_type: int) -> str:
    """`draw_copy`, `key_down`, ... or `type-N` for one nobody named."""
    return _PER_CHANNEL.get((channel, direction), {}).get(msg_type) or \
        _COMMON[direction].get(msg_type) or 'type-%d' % msg_type


def message_type(channel: str, direction: str, name: str) -> int:
    """The type number of a message name on `channel` in `direction`
    (also `type-N` or a bare number). ValueError names the choices.
    """
    text = str(name).strip().lower()
    if text.isdigit():
        return int(text)
    if text.startswith('type-') and text[5:].isdigit():
        return int(text[5:])
    table = dict(_COMMON[direction])
    table.update(_PER_CHANNEL.get((channel, direction), {}))
    for number, known in table.items():
        if known == text:
            return number
    raise ValueError('%s is no %s message of the %s channel (known: %s)' % (
        name, direction, channel, ', '.join(sorted(table.values()))))


def has_cap(words: typing.Sequence[int], bit: int) -> bool:
    return len(words) > bit // 32 and bool(words[bit // 32] &
                                           (1 << (bit % 32)))


def caps_words(bits: typing.Iterable[int]) -> typing.Tuple[int, ...]:
    """Capability words with `bits` set (at least one word)."""
    bits = list(bits)
    words = [0] * (max(bits) // 32 + 1 if bits else 1)
    for b in bits:
        words[b // 32] |= 1 << (b % 32)
    return tuple(words)


def _caps(body, off, n, what):
    if n > 64 or off + 4 * n > len(body):
        raise WireError('%s: %d capability words at offset %d run past its '
                        '%d bytes' % (what, n, off, len(body)))
    return tuple(struct.unpack_from('<%dI' % n, body, off))


@dataclasses.dataclass
class LinkMess:
    """The client's SpiceLinkMess."""
    connection_id: int
    channel_type: int
    channel_id: int
    common_caps: tuple
    channel_caps: tuple

    @property
    def channel(self):
        return channel_name(self.channel_type)


@dataclasses.dataclass
class LinkReply:
    """The server's SpiceLinkReply."""
    error: int
    pub_key: bytes
    common_caps: tuple
    channel_caps: tuple

    def has_common(self, bit: int) -> bool:
        return has_cap(self.common_caps, bit)


def link_header(size: int) -> bytes:
    return LINK_HEADER.pack(MAGIC, VERSION[0], VERSION[1], size)


def read_link_header(data: bytes, what: str = 'link') -> int:
    """The body size a 16-byte link header announces."""
    if len(data) < LINK_HEADER.size:
        raise WireError('%s: %d bytes, not a 16-byte SPICE link header'
                        % (what, len(data)))
    magic, major, _minor, size = LINK_HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise WireError('%s: starts with %r, not the SPICE magic REDQ' % (
            what, bytes(magic)))
    if major != VERSION[0]:
        raise WireError('%s: SPICE protocol %d, not %d' % (
            what, major, VERSION[0]))
    if size > MAX_LINK:
        raise WireError('%s: a %d-byte link message (no link message is '
                        'over %d bytes)' % (what, size, MAX_LINK))
    return size


def pack_link_mess(channel_type: int, connection_id: int = 0,
                   channel_id: int = 0, common_caps=(), channel_caps=()
                   ) -> bytes:
    """Header and SpiceLinkMess."""
    body = LINK_MESS.pack(connection_id, channel_type, channel_id,
                          len(common_caps), len(channel_caps),
                          LINK_MESS.size)
    body += b''.join(struct.pack('<I', w) for w in
                     tuple(common_caps) + tuple(channel_caps))
    return link_header(len(body)) + body


def parse_link_mess(body: bytes, what: str = 'client link') -> LinkMess:
    if len(body) < LINK_MESS.size:
        raise WireError('%s: %d bytes, a SpiceLinkMess has at least %d' % (
            what, len(body), LINK_MESS.size))
    cid, ctype, cidx, ncommon, nchan, off = LINK_MESS.unpack_from(body, 0)
    words = _caps(body, off, ncommon + nchan, what)
    return LinkMess(cid, ctype, cidx, words[:ncommon], words[ncommon:])


def parse_link_reply(body: bytes, what: str = 'server link reply'
                     ) -> LinkReply:
    if len(body) < 4:
        raise WireError('%s: %d bytes, no error code' % (what, len(body)))
    error = struct.unpack_from('<I', body, 0)[0]
    if error:
        return LinkReply(error, b'', (), ())
    if len(body) < LINK_REPLY.size:
        raise WireError('%s: %d bytes, a SpiceLinkReply has at least %d' % (
            what, len(body), LINK_REPLY.size))
    _err, key, ncommon, nchan, off = LINK_REPLY.unpack_from(body, 0)
    words = _caps(body, off, ncommon + nchan, what)
    return LinkReply(0, key, words[:ncommon], words[ncommon:])


def pack_message(msg_type: int, body: bytes = b'', mini: bool = True,
                 serial: int = 0, declared_size: typing.Optional[int] = None
                 ) -> bytes:
    """A header and `body`; `declared_size` may lie about its size."""
    size = len(body) if declared_size is None else declared_size
    if mini:
        return MINI_HEADER.pack(msg_type, size) + body
    return FULL_HEADER.pack(serial, msg_type, size, 0) + body


@dataclasses.dataclass
class Unit:
    """One piece of a direction's stream: `kind` is 'link' (header and
    link message or reply), 'auth' (the mechanism), 'ticket',
    'link_result' or 'message'; `raw` is its bytes as they were on the
    wire. A message has `type`, `name`, `body` and `header_len`.
    """
    kind: str
    raw: bytes
    offset: int             # stream offset of its first byte
    type: int = 0
    name: str = ''
    header_len: int = 0

    @property
    def body(self) -> bytes:
        return self.raw[self.header_len:]


class Negotiation:
    """What one connection agreed during its link, shared by the two
    directions' framers: the client's link message, the server's reply,
    and from both the header and auth mechanism in use.
    """

    def __init__(self):
        self.mess: typing.Optional[LinkMess] = None
        self.reply: typing.Optional[LinkReply] = None

    @property
    def channel(self) -> str:
        return self.mess.channel if self.mess else 'unlinked'

    @property
    def settled(self) -> bool:
        return self.mess is not None and self.reply is not None

    def _both(self, bit):
        return has_cap(self.mess.common_caps, bit) and \
            has_cap(self.reply.common_caps, bit)

    @property
    def mini_header(self) -> bool:
        return self._both(CAP_MINI_HEADER)

    @property
    def auth_selection(self) -> bool:
        return self._both(CAP_AUTH_SELECTION)


class Framer:
    """Cuts one direction of one SPICE connection into Units.

    `feed(data)` returns the units completed by `data` (bytes of an
    incomplete one are held). The client's side waits for the server's
    reply before it cuts its auth and ticket, as a real client does.
    A server that refuses the link ends the stream after its reply: more
    bytes give a WireError. `skip_link=True` starts at the messages (a
    stream whose link was not captured) and needs `mini` to be known.
    """

    def __init__(self, direction: str, negotiation: Negotiation,
                 skip_link: bool = False, mini: bool = True):
        if direction not in DIRECTIONS:
            raise ValueError('direction must be one of %s' % (DIRECTIONS,))
        self.direction = direction
        self.neg = negotiation
        self.buf = bytearray()
        self.offset = 0                 # stream offset of buf[0]
        self._mini = mini if skip_link else None
        self.state = 'messages' if skip_link else 'link'

    def _what(self, more=''):
        return '%s channel, %s%s' % (self.neg.channel, self.direction, more)

    def _take(self, n):
        raw = bytes(self.buf[:n])
        del self.buf[:n]
        off = self.offset
        self.offset += n
        return raw, off

    def feed(self, data: bytes) -> typing.List[Unit]:
        self.buf += data
        out = []
        while True:
            unit = self._next()
            if unit is None:
                return out
            out.append(unit)

    def pending(self) -> int:
        """Bytes held that make no complete unit yet."""
        return len(self.buf)

    def _next(self):
        buf = self.buf
        if self.state == 'link':
            if len(buf) < LINK_HEADER.size:
                return None
            size = read_link_header(bytes(buf[:LINK_HEADER.size]),
                                    self._what(' link header'))
            if len(buf) < LINK_HEADER.size + size:
                return None
            raw, off = self._take(LINK_HEADER.size + size)
            body = raw[LINK_HEADER.size:]
            if self.direction == C2S:
                self.neg.mess = parse_link_mess(body, self._what(
                    ' link message'))
                self.state = 'auth'
            else:
                self.neg.reply = parse_link_reply(body, self._what(
                    ' link reply'))
                self.state = 'refused' if self.neg.reply.error else \
                    'link_result'
            return Unit('link', raw, off)
        if self.state == 'refused':
            if buf:
                raise WireError('%s: %d bytes after the server refused the '
                                'link (error %d)' % (
                                    self._what(), len(buf),
                                    self.neg.reply.error))
            return None
        if self.state in ('auth', 'ticket'):
            if self.neg.reply is None:
                return None         # the client waits for the reply too
            if self.state == 'auth':
                self.state = 'ticket'
                if self.neg.auth_selection:
                    if len(buf) < AUTH_MECHANISM_BYTES:
                        self.state = 'auth'
                        return None
                    return Unit('auth', *self._take(AUTH_MECHANISM_BYTES))
            if len(buf) < TICKET_BYTES:
                return None
            self.state = 'messages'
            return Unit('ticket', *self._take(TICKET_BYTES))
        if self.state == 'link_result':
            if len(buf) < LINK_RESULT_BYTES:
                return None
            self.state = 'messages'
            return Unit('link_result', *self._take(LINK_RESULT_BYTES))
        return self._message()

    def mini(self) -> bool:
        if self._mini is None:
            self._mini = self.neg.mini_header
        return self._mini

    def _header_len(self):
        if self._mini is None and not self.neg.settled:
            return None             # the header depends on both sides
        return MINI_HEADER.size if self.mini() else FULL_HEADER.size

    def _header(self):
        """(header length, type, body size) of the message at the front
        of the buffer, once its header is known and whole, else None.
        """
        hlen = self._header_len()
        if self.state != 'messages' or hlen is None or len(self.buf) < hlen:
            return None
        if hlen == MINI_HEADER.size:
            mtype, size = MINI_HEADER.unpack_from(self.buf, 0)
        else:
            _serial, mtype, size, _sub = FULL_HEADER.unpack_from(self.buf, 0)
        return hlen, mtype, size

    def held(self) -> typing.Optional[typing.Tuple[int, int]]:
        """(type, body size) of the message whose header has arrived but
        not all of its body; None when no message header is held.
        """
        head = self._header()
        return head[1:] if head else None

    def partial(self) -> str:
        """What is held of a unit not yet whole, in words ('' when
        nothing is): '16 of the 106 bytes of message type 103 (init)',
        '3 of the 6 header bytes', '10 of the 182 bytes of the link', ...
        """
        n = len(self.buf)
        if not n:
            return ''
        if self.state == 'messages':
            head = self._header()
            if head is None:
                return '%d of the %s header bytes' % (
                    n, self._header_len() or 'unknown')
            hlen, mtype, size = head
            return '%d of the %d bytes of message type %d (%s)' % (
                n, hlen + size, mtype, message_name(
                    self.neg.channel, self.direction, mtype))
        if self.state == 'link':
            if n < LINK_HEADER.size:
                return '%d of the %d bytes of the link header' % (
                    n, LINK_HEADER.size)
            return '%d of the %d bytes of the link' % (
                n, LINK_HEADER.size + LINK_HEADER.unpack_from(self.buf)[3])
        if self.state in ('auth', 'ticket') and self.neg.reply is None:
            return '%d bytes held until the server\'s link reply' % n
        want = {'auth': AUTH_MECHANISM_BYTES, 'ticket': TICKET_BYTES,
                'link_result': LINK_RESULT_BYTES}.get(self.state, n)
        return '%d of the %d bytes of the %s' % (
            n, want, self.state.replace('_', ' '))

    def _message(self):
        buf = self.buf
        head = self._header()
        if head is None:
            return None
        hlen, mtype, size = head
        if size > MAX_MESSAGE:
            raise WireError('%s: message type %d at stream byte %d says it '
                            'has %d bytes (over %d: not SPICE framing)' % (
                                self._what(), mtype, self.offset, size,
                                MAX_MESSAGE))
        if len(buf) < hlen + size:
            return None
        raw, off = self._take(hlen + size)
        return Unit('message', raw, off, type=mtype, header_len=hlen,
                    name=message_name(self.neg.channel, self.direction,
                                      mtype))


def frame_stream(data: bytes, direction: str, negotiation: Negotiation
                 ) -> typing.Tuple[typing.List[Unit], int]:
    """Every complete unit of a whole captured direction, and how many
    bytes were left over (a cut message).
    """
    framer = Framer(direction, negotiation)
    units = framer.feed(data)
    return units, framer.pending()
