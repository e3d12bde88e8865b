"""Per-channel chained CRC32C (docs/contracts/sextant.md §1.4).

Each channel's value is the CRC32C of the concatenation of every TLV record
of its kind since boot, oldest first; it starts at 0 and continues with
`crc32c.crc32c(tlv, prev)`.
"""

import crc32c

from kerbside_tempest_plugin.digest import events as ev


def crc32c_continue(data, prev=0):
    """CRC-32C (Castagnoli) of `data`, continuing from a finalized value."""
    return crc32c.crc32c(data, prev)


class ChannelChains:
    """The eight channel hashes, updated event by event in push order."""

    def __init__(self, hashes=None):
        self._hashes = dict.fromkeys(ev.CHANNELS, 0)
        if hashes:
            for channel, value in hashes.items():
                if channel not in self._hashes:
                    raise KeyError('unknown channel %r' % channel)
                self._hashes[channel] = value
        self.count = 0

    def update(self, event):
        """Feed one event; UnknownRecords belong to no channel."""
        channel = ev.BY_KIND.get(getattr(event, 'kind', None))
        if channel is None:
            return
        self._hashes[channel.KIND] = crc32c_continue(
            event.tlv(), self._hashes[channel.KIND])
        self.count += 1

    def extend(self, events):
        for event in events:
            self.update(event)
        return self

    @property
    def hashes(self):
        return dict(self._hashes)

    @classmethod
    def replay(cls, events):
        return cls().extend(events)

    def __eq__(self, other):
        other = getattr(other, 'hashes', other)
        return self._hashes == other

    def __repr__(self):
        return 'ChannelChains(%s)' % ', '.join(
            '%s=0x%08x' % kv for kv in self._hashes.items())
