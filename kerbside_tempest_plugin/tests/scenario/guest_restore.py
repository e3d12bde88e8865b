"""Boot once, restore per test: when a Sextant guest may be saved.

The direct-qemu lane saves the first guest of each console (lane.Lane's
`guest_restore`) the moment `awaiting_untouched(guest)` says so, and
starts every later guest there from that save
(docs/plans/fast-feedback.md). The save is taken at the Awaiting screen
before anyone has touched the guest: its banner is on serial, its screen
shows the Awaiting digest (frame counter 1 or more) and every one of the
eight event channels is still 0 with no event in the window. A guest
that shows any event is refused (ProviderError): a save of it would
hand its keys to every later test.

No tempest here, so benchmarks use it too. `$KTP_GUEST_RESTORE` (1/0;
default 1) turns it on or off for the tempest classes and benchmarks
that ask `enabled()`.
"""

import os

from kerbside_tempest_plugin.common import errors

RESTORE_ENV = 'KTP_GUEST_RESTORE'
SAVE_SHOT = 'restore-save.png'


def enabled(environ=None):
    """Whether guests are restored ($KTP_GUEST_RESTORE, default on)."""
    from kerbside_tempest_plugin.lane import lane as lane_mod
    return lane_mod.env_flag(RESTORE_ENV, True, environ)


def lane_kwargs(environ=None):
    """lane.Lane keyword arguments for the setting: guest_restore on or
    off.
    """
    return {'guest_restore': awaiting_untouched if enabled(environ)
            else None}


def untouched_note(digest):
    """'Awaiting, frame N, ...' for a digest of a guest nobody has
    touched; None while the guest has drawn no frame yet. Raises
    ProviderError when the digest shows any event.
    """
    if digest.frame_counter < 1:
        return None
    touched = sorted(k for k, v in digest.hashes.items() if v)
    if touched or digest.events:
        raise errors.ProviderError(
            'the guest is not untouched at its save: frame %d, channels '
            'with events: %s, %d event(s) in the window; a save must come '
            'before any key' % (digest.frame_counter,
                                ', '.join(touched) or 'none',
                                len(digest.events)))
    return 'Awaiting, frame %d, all 8 channels 0' % digest.frame_counter


def awaiting_untouched(guest):
    """The lane's `guest_restore` predicate (providers.direct_qemu's
    `restore_when`): the banner on serial and a QMP screendump whose
    digest is untouched_note's. None until then.
    """
    from kerbside_tempest_plugin.digest import errors as digest_errors
    from kerbside_tempest_plugin.digest import frame
    from kerbside_tempest_plugin.sextant import contract
    if contract.BANNER not in guest.serial.read():
        return None
    path = guest.screendump(os.path.join(guest.artifact_dir, SAVE_SHOT))
    try:
        analysis = frame.analyse(path)
    except digest_errors.DigestError:
        return None         # not drawn yet, or a torn capture: look again
    return untouched_note(analysis.digest)
