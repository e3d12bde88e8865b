"""Shared vectors for the digest tests (docs/contracts/sextant.md §3)."""

from kerbside_tempest_plugin.digest import events as ev


def _dump(text):
    """Parse a hexdump as printed in the contract (offset: bytes)."""
    out = bytearray()
    for line in text.strip().splitlines():
        out += bytes.fromhex(line.split(':', 1)[1])
    return bytes(out)


# Contract §3.1, copied verbatim.
GOLDEN_EMPTY = _dump("""
0000: 53 58 44 47 02 01 00 00 00 08 11 04 00 00 00 00
0010: 12 04 00 00 00 00 13 04 00 00 00 00 14 04 00 00
0020: 00 00 15 04 00 00 00 00 16 04 00 00 00 00 17 04
0030: 00 00 00 00 18 04 00 00 00 00 00 00 00 00
""")

# Contract §3.2.
GOLDEN_SINGLE_KEYPRESS = _dump("""
0000: 53 58 44 47 02 78 56 34 12 09 11 04 5a 54 41 6f
0010: 12 04 00 00 00 00 13 04 00 00 00 00 14 04 00 00
0020: 00 00 15 04 00 00 00 00 16 04 00 00 00 00 17 04
0030: 00 00 00 00 18 04 00 00 00 00 01 0c 08 07 06 05
0040: 04 03 02 01 41 00 34 12 be ba fe ca
""")
SINGLE_KEYPRESS = ev.Keypress(0x0102030405060708, ord('A'), 0x1234)

# Contract §3.3.
GOLDEN_MIXED = _dump("""
0000: 53 58 44 47 02 ef be ad de 0b 11 04 4c 26 94 16
0010: 12 04 da 53 c4 bb 13 04 09 b6 e5 c9 14 04 85 b6
0020: 03 76 15 04 f1 7f 6f f3 16 04 30 ef c4 d7 17 04
0030: 7c 5f e4 b3 18 04 10 9b f9 65 06 08 06 00 00 10
0040: 00 00 00 00 07 10 07 00 00 10 00 00 00 00 00 04
0050: 00 03 20 03 58 02 08 0d 08 00 00 10 00 00 00 00
0060: ff 00 00 00 00 78 56 34 12
""")

# The eight events of the crate's golden "mixed_all_variants", recovered
# from the channel hashes of §3.3 (each matches its stated hash).
T0 = 0x10000000
MIXED_EVENTS = [
    ev.Keypress(T0 + 1, ord('k'), 0x42),
    ev.LineRendered(T0 + 2, 7),
    ev.SceneTransition(T0 + 3, 'awaiting', 'booting'),
    ev.BootloaderDecision(T0 + 4, 'ignore', 3),
    ev.PasteReceived(T0 + 5, 28, True),
    ev.BootloaderTimeout(T0 + 6),
    ev.ModeSwitch(T0 + 7, 1024, 768, 800, 600),
    ev.ModeCycle(T0 + 8, 255, False),
]
MIXED_HASHES = {
    'keypress': 0x1694264c,
    'line_rendered': 0xbbc453da,
    'scene_transition': 0xc9e5b609,
    'bootloader_decision': 0x7603b685,
    'paste_received': 0xf36f7ff1,
    'bootloader_timeout': 0xd7c4ef30,
    'mode_switch': 0xb3e45f7c,
    'mode_cycle': 0x65f99b10,
}

# Screen sizes of contract §2.3.
SCREEN_SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 720),
                (1280, 1024), (1920, 1080)]
