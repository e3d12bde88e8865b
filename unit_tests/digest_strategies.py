"""Hypothesis strategies for digest events (values that survive the wire)."""

from hypothesis import strategies as st

from kerbside_tempest_plugin.digest import events as ev

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2 ** 64 - 1)
unicode16 = u16.filter(lambda c: not 0xD800 <= c <= 0xDFFF)
phases = st.sampled_from(sorted(ev.PHASE_CODES))
choices = st.sampled_from(sorted(ev.CHOICE_CODES))

BY_KIND = {
    'keypress': st.builds(ev.Keypress, u64, unicode16, u16),
    'line_rendered': st.builds(ev.LineRendered, u64, u16),
    'scene_transition': st.builds(ev.SceneTransition, u64, phases, phases),
    'bootloader_decision': st.builds(ev.BootloaderDecision, u64, choices,
                                     u32),
    'paste_received': st.builds(ev.PasteReceived, u64, u16, st.booleans()),
    'bootloader_timeout': st.builds(ev.BootloaderTimeout, u64),
    'mode_switch': st.builds(ev.ModeSwitch, u64, u16, u16, u16, u16),
    'mode_cycle': st.builds(ev.ModeCycle, u64, u32, st.booleans()),
}
any_event = st.one_of(*BY_KIND.values())


def history(kind=None, max_size=12):
    """A history whose newest event is of `kind` (if given)."""
    base = st.lists(any_event, max_size=max_size)
    if kind is None:
        return base
    return st.tuples(base, BY_KIND[kind]).map(lambda t: t[0] + [t[1]])
