"""CRC32C channel chains (docs/contracts/sextant.md §1.4)."""

import crc32c

from kerbside_tempest_plugin.digest import chains
from kerbside_tempest_plugin.digest import events as ev
from unit_tests import digest_fixtures as fx


def test_crc32c_check_value():
    assert chains.crc32c_continue(b'123456789') == 0xE3069283


def test_chain_equals_crc_of_concatenation():
    events = [ev.Keypress(i, 0x61 + i, 0) for i in range(5)]
    c = chains.ChannelChains.replay(events)
    joined = b''.join(e.tlv() for e in events)
    assert c.hashes['keypress'] == crc32c.crc32c(joined)
    assert all(v == 0 for k, v in c.hashes.items() if k != 'keypress')


def test_each_event_only_moves_its_channel():
    c = chains.ChannelChains()
    for event in fx.MIXED_EVENTS:
        before = c.hashes
        c.update(event)
        after = c.hashes
        changed = [k for k in after if after[k] != before[k]]
        assert changed == [event.kind]
    assert c == fx.MIXED_HASHES
    assert c.count == 8


def test_unknown_records_do_not_move_chains():
    c = chains.ChannelChains.replay([ev.UnknownRecord(0x42, b'x')])
    assert c.hashes == dict.fromkeys(ev.CHANNELS, 0)


def test_order_matters():
    a = [ev.LineRendered(1, 1), ev.LineRendered(2, 2)]
    assert chains.ChannelChains.replay(a) != \
        chains.ChannelChains.replay(a[::-1])
