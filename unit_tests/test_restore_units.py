"""Boot once, restore per guest, without qemu: the command line of a
restored guest, which guest the provider restores or saves, the guard
that refuses to save a touched guest, where the saves live and that a
teardown removes them (docs/plans/fast-feedback.md).
"""

import os

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.digest import payload
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.providers import direct_qemu
from kerbside_tempest_plugin.tests.scenario import guest_restore
from unit_tests import digest_fixtures as fx

ARGV = dict(qemu_binary='qemu', name='g', accel='tcg', memory_mb=256,
            ovmf_code='/c.fd', vars_copy='/v.fd', serial_path='/s.log',
            ticket_file='/t', spice_port=5900, qmp_path='/q.sock',
            overlay='/o.qcow2', tls_port=5901, x509_dir='/x',
            tls_only=True, trace_path='/tr.log')


def _without(argv, drop):
    out, skip = [], 0
    for i, a in enumerate(argv):
        if skip:
            skip -= 1
            continue
        if a in drop:
            skip = 1
            continue
        out.append(a)
    return out


def test_restored_argv_differs_only_in_serial_host_side_and_incoming():
    cold = direct_qemu.build_argv(**ARGV)
    warm = direct_qemu.build_argv(serial_append=True, incoming=True, **ARGV)
    assert ['-serial', 'file:/s.log'] == cold[cold.index('-serial'):][:2]
    assert '-incoming' not in cold and '-chardev' not in cold
    i = warm.index('-chardev')
    assert warm[i + 1] == 'file,id=serial0,path=/s.log,append=on'
    assert warm[warm.index('-serial') + 1] == 'chardev:serial0'
    assert warm[warm.index('-incoming') + 1] == 'defer'
    # every device, the SPICE server and QMP are the same
    assert _without(cold, {'-serial'}) == _without(
        warm, {'-serial', '-chardev', '-incoming'})


class _Provider(direct_qemu.DirectQemuProvider):
    """A provider whose qemu is not started: records what it would do."""

    def __init__(self, tmp, **kw):
        super().__init__(ovmf_code=__file__, ovmf_vars=__file__,
                         spice_port=5930, ticket='not-a-real-ticket',
                         secrets=None, state_dir=str(tmp / 'state'),
                         **kw)
        self.calls = []

    def _start(self, guest, image, restore=None):
        self.calls.append(('start', guest.name, image, restore))

    def _save(self, guest, image):
        saved = direct_qemu.SavedGuest(
            image=image, source=guest.name, state='/nowhere/state.mig',
            vars_fd='/v', overlay='/o', serial=b'Hello\r\n', note='n',
            seconds=0.1, size=1)
        self.saved[image] = saved
        guest.saved_as = saved
        self.calls.append(('save', guest.name, image))
        return saved


def test_first_guest_boots_cold_and_is_saved_the_rest_restored(tmp_path):
    image = str(tmp_path / 'sextant.qcow2')
    p = _Provider(tmp_path, restore_when=lambda g: 'ready')
    try:
        g1 = p.boot(image, 'g1', str(tmp_path / 'g1'))
        g2 = p.boot(image, 'g2', str(tmp_path / 'g2'))
        g3 = p.boot(image, 'g3', str(tmp_path / 'g3'))
    finally:
        p.close()
    saved = g1.saved_as
    assert p.calls == [('start', 'g1', image, None), ('save', 'g1', image),
                       ('start', 'g2', image, saved),
                       ('start', 'g3', image, saved)]
    assert g2.saved_as is None and g3.saved_as is None


def test_another_image_gets_its_own_cold_boot(tmp_path):
    a, b = str(tmp_path / 'a.qcow2'), str(tmp_path / 'b.qcow2')
    p = _Provider(tmp_path, restore_when=lambda g: 'ready')
    try:
        p.boot(a, 'g1', str(tmp_path / 'g1'))
        p.boot(b, 'g2', str(tmp_path / 'g2'))
    finally:
        p.close()
    assert [c[:2] for c in p.calls] == [('start', 'g1'), ('save', 'g1'),
                                        ('start', 'g2'), ('save', 'g2')]


@pytest.mark.parametrize('restore_when,image', [
    (None, 'img.qcow2'),                     # restore off: always cold
    (lambda g: 'ready', None),               # diskless: never saved
])
def test_no_restore_boots_every_guest_cold(tmp_path, restore_when, image):
    image = image and str(tmp_path / image)
    p = _Provider(tmp_path, restore_when=restore_when)
    try:
        for n in ('g1', 'g2'):
            p.boot(image, n, str(tmp_path / n))
    finally:
        p.close()
    assert p.calls == [('start', 'g1', image, None),
                       ('start', 'g2', image, None)]


def test_untouched_note_waits_for_a_frame_then_accepts_a_clean_awaiting():
    d = payload.decode(fx.GOLDEN_EMPTY)          # frame 1, no event
    assert guest_restore.untouched_note(d) == \
        'Awaiting, frame 1, all 8 channels 0'
    import dataclasses
    assert guest_restore.untouched_note(
        dataclasses.replace(d, frame_counter=0)) is None


@pytest.mark.parametrize('golden', [fx.GOLDEN_SINGLE_KEYPRESS,
                                    fx.GOLDEN_MIXED])
def test_untouched_note_refuses_a_guest_that_saw_an_event(golden):
    with pytest.raises(errors.ProviderError, match='not untouched'):
        guest_restore.untouched_note(payload.decode(golden))


@pytest.mark.parametrize('value,expected', [
    (None, True), ('1', True), ('0', False), ('off', False)])
def test_restore_setting(value, expected):
    environ = {} if value is None else {guest_restore.RESTORE_ENV: value}
    assert guest_restore.enabled(environ) is expected
    kw = guest_restore.lane_kwargs(environ)
    assert (kw['guest_restore'] is guest_restore.awaiting_untouched) is \
        expected


def test_lane_providers_get_the_predicate_and_a_state_dir_each(tmp_path):
    lane = lane_mod.Lane(str(tmp_path), route='direct', kerbside=False,
                         consoles=2, ovmf_code=__file__, ovmf_vars=__file__,
                         guest_restore=guest_restore.awaiting_untouched)
    lane.ports = {'guest_spice': 1, 'guest_spice_tls': 2,
                  'guest_spice_2': 3, 'guest_spice_tls_2': 4}
    lane.tickets = ['a', 'b']
    providers = [lane._provider(i) for i in range(2)]
    assert [p.restore_when for p in providers] == \
        [guest_restore.awaiting_untouched] * 2
    assert [p.state_dir for p in providers] == [
        os.path.join(str(tmp_path), lane_mod.GUEST_STATE_DIR, i)
        for i in ('1', '2')]
    assert lane.info()['guest_restore'] is True


def test_teardown_removes_the_saved_guests(tmp_path):
    state = tmp_path / lane_mod.GUEST_STATE_DIR / '1' / 'g1-x'
    state.mkdir(parents=True)
    (state / 'state.mig').write_bytes(b'\0' * 16)
    lane_mod.teardown_workdir(str(tmp_path), port_timeout=0)
    assert not (tmp_path / lane_mod.GUEST_STATE_DIR).exists()
