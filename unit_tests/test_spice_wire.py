"""spice.wire: the one SPICE framer, fed real-shaped streams."""

import struct

import pytest

from kerbside_tempest_plugin.spice import wire

CAPS = wire.caps_words([wire.CAP_AUTH_SELECTION, wire.CAP_AUTH_SPICE,
                        wire.CAP_MINI_HEADER])


def reply(caps=CAPS, error=0):
    body = wire.LINK_REPLY.pack(error, b'k' * wire.PUBKEY_BYTES, len(caps),
                                0, wire.LINK_REPLY.size)
    body += b''.join(struct.pack('<I', w) for w in caps)
    return wire.link_header(len(body)) + body


def client_stream(channel_type=3, caps=CAPS, mini=True, msgs=()):
    out = wire.pack_link_mess(channel_type, common_caps=caps)
    if wire.has_cap(caps, wire.CAP_AUTH_SELECTION):
        out += struct.pack('<I', 1)
    out += b'T' * wire.TICKET_BYTES
    for t, body in msgs:
        out += wire.pack_message(t, body, mini=mini)
    return out


def server_stream(caps=CAPS, mini=True, msgs=()):
    out = reply(caps) + b'\0\0\0\0'
    for t, body in msgs:
        out += wire.pack_message(t, body, mini=mini)
    return out


def frame(client, server, chunk):
    """The order a real link takes: the client's link message, the
    server's reply (and its first messages), then the rest of the client;
    a framer holding bytes is fed nothing once the other side settles.
    """
    neg = wire.Negotiation()
    c = wire.Framer(wire.C2S, neg)
    s = wire.Framer(wire.S2C, neg)
    link = wire.LINK_HEADER.size + wire.LINK_HEADER.unpack_from(client)[3]
    cu, su = [], []
    for i in range(0, link, chunk):
        cu += c.feed(client[i:min(i + chunk, link)])
    for i in range(0, len(server), chunk):
        su += s.feed(server[i:i + chunk])
    cu += c.feed(b'')
    for i in range(link, len(client), chunk):
        cu += c.feed(client[i:i + chunk])
    return cu, su, c, s


@pytest.mark.parametrize('chunk', [1, 7, 100000])
def test_units_of_a_mini_header_inputs_connection(chunk):
    client = client_stream(msgs=[(101, b'\x1e\0\0\0'), (102, b'\x9e\0\0\0'),
                                 (2, b'')])
    server = server_stream(msgs=[(3, b'\x14\0\0\0'), (101, b'\0\0')])
    cu, su, c, _s = frame(client, server, chunk)
    assert [u.kind for u in cu] == ['link', 'auth', 'ticket', 'message',
                                    'message', 'message']
    assert [u.name for u in cu[3:]] == ['key_down', 'key_up', 'ack']
    assert cu[3].body == b'\x1e\0\0\0' and cu[3].header_len == 6
    assert b''.join(u.raw for u in cu) == client and c.pending() == 0
    assert [u.kind for u in su] == ['link', 'link_result', 'message',
                                    'message']
    assert [u.name for u in su[2:]] == ['set_ack', 'init']
    assert cu[4].offset == len(client) - 6 - 10   # ack, then key_up


def test_full_headers_without_mini_and_no_auth_selection():
    caps = wire.caps_words([wire.CAP_AUTH_SPICE])
    client = client_stream(channel_type=2, caps=caps, mini=False,
                           msgs=[(101, b'abc')])
    server = server_stream(caps=caps, mini=False, msgs=[(304, b'x' * 40)])
    cu, su, _c, _s = frame(client, server, 5)
    assert [u.kind for u in cu] == ['link', 'ticket', 'message']
    assert cu[2].header_len == 18 and cu[2].name == 'init'
    assert su[-1].name == 'draw_copy' and su[-1].body == b'x' * 40


def test_the_client_side_waits_for_the_reply():
    neg = wire.Negotiation()
    c = wire.Framer(wire.C2S, neg)
    units = c.feed(client_stream())
    assert [u.kind for u in units] == ['link']
    wire.Framer(wire.S2C, neg).feed(reply())
    assert [u.kind for u in c.feed(b'')] == ['auth', 'ticket']


@pytest.mark.parametrize('data,match', [
    (b'HTTP/1.1 400 Bad Request\r\n\r\n', 'not the SPICE magic'),
    (wire.LINK_HEADER.pack(b'REDQ', 2, 2, 1 << 20), 'link message'),
    (wire.LINK_HEADER.pack(b'REDQ', 3, 0, 20), 'SPICE protocol 3'),
])
def test_garbage_gives_a_wire_error(data, match):
    with pytest.raises(wire.WireError, match=match):
        wire.Framer(wire.C2S, wire.Negotiation()).feed(data)


def test_an_absurd_message_size_is_named():
    neg = wire.Negotiation()
    wire.Framer(wire.C2S, neg).feed(client_stream())
    s = wire.Framer(wire.S2C, neg)
    with pytest.raises(wire.WireError, match='display|inputs|says it has'):
        s.feed(reply() + b'\0' * 4 + struct.pack('<HI', 304, 1 << 30))


def test_bytes_after_a_refused_link():
    neg = wire.Negotiation()
    wire.Framer(wire.C2S, neg).feed(client_stream())
    s = wire.Framer(wire.S2C, neg)
    body = struct.pack('<I', 7)
    assert [u.kind for u in s.feed(wire.link_header(4) + body)] == ['link']
    assert neg.reply.error == 7
    with pytest.raises(wire.WireError, match='refused the link'):
        s.feed(b'more')


def test_message_names_and_types():
    assert wire.message_type('inputs', wire.C2S, 'key_down') == 101
    assert wire.message_type('display', wire.S2C, 'DRAW_COPY') == 304
    assert wire.message_type('display', wire.S2C, 'set_ack') == 3
    assert wire.message_type('cursor', wire.S2C, 'type-999') == 999
    assert wire.message_name('display', wire.S2C, 999) == 'type-999'
    with pytest.raises(ValueError, match='known: .*key_up'):
        wire.message_type('inputs', wire.C2S, 'draw_copy')


def test_a_cut_stream_leaves_its_bytes_pending():
    neg = wire.Negotiation()
    wire.Framer(wire.C2S, neg).feed(client_stream())
    units, left = wire.frame_stream(server_stream(msgs=[(304, b'y' * 9)])
                                    [:-3], wire.S2C, neg)
    assert units[-1].kind == 'link_result' and left == 6 + 6


def test_what_a_framer_holds_of_a_cut_unit():
    neg = wire.Negotiation()
    c = wire.Framer(wire.C2S, neg)
    assert c.partial() == '' and c.held() is None
    c.feed(client_stream()[:10])
    assert c.partial() == '10 of the 16 bytes of the link header'
    c.feed(client_stream()[10:20])
    assert c.partial() == '20 of the 38 bytes of the link'
    c.feed(client_stream()[20:])
    assert c.partial() == "132 bytes held until the server's link reply"
    s = wire.Framer(wire.S2C, neg)
    s.feed(reply()[:-2])
    assert c.feed(b'') == [] and c.held() is None
    s.feed(reply()[-2:] + b'\0\0')
    assert [u.kind for u in c.feed(b'')] == ['auth', 'ticket']
    full = wire.pack_message(101, b'\x1e\0\0\0')
    c.feed(full[:3])
    assert c.partial() == '3 of the 6 header bytes' and c.held() is None
    c.feed(full[3:8])
    assert c.held() == (101, 4)
    assert c.partial() == '8 of the 10 bytes of message type 101 (key_down)'
    assert [u.name for u in c.feed(full[8:])] == ['key_down']
    assert c.partial() == '' and c.held() is None


def test_a_link_reply_names_its_common_caps():
    got = wire.parse_link_reply(reply()[wire.LINK_HEADER.size:])
    assert got.has_common(wire.CAP_MINI_HEADER)
    assert not got.has_common(wire.CAP_AUTH_SASL)
