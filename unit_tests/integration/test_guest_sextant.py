"""The Sextant contract, end to end, on a guest under qemu (TCG).

Every assertion is written against docs/contracts/sextant.md, not
against images/sextant's internals, so the same tests pass against a real
Uncalibrated Sextant image (SEXTANT_IMAGE=/path/to/uncalibrated-sextant.qcow2).
Keys go in with QMP send-key, frames come out with QMP screendump and are
decoded with kerbside_tempest_plugin.digest; the ending is read from the
serial drain (pitfall 1).

To keep the 2-core machine usable, each test shares one boot across many
assertions.
"""

import os
import pathlib
import subprocess
import time

import pytest

from kerbside_tempest_plugin.digest import chains as dchains
from kerbside_tempest_plugin.digest import fbhash
from kerbside_tempest_plugin.digest import payload as pl
from kerbside_tempest_plugin.sextant import contract
from kerbside_tempest_plugin.sextant import drain as sdrain
from kerbside_tempest_plugin.sextant import expect as sx

pytestmark = pytest.mark.integration

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BANNER_TIMEOUT = 120      # boot to banner is ~6 s under TCG, more when busy
BEAT_TIMEOUT = 60
EXIT_TIMEOUT = 60
ABORT_EXIT_TIMEOUT = 20      # Abort resets at once (§5.3 step 3)
# Third wrong paste to power-off: 31 countdown ticks + 5 s (§5.3 step 8).
THREE_WRONG_EXIT_TIMEOUT = 50
COUNTDOWN_TIMEOUT = 60


# ---- predicates over a FrameAnalysis ---------------------------------------

def has_event(analysis, kind, **fields):
    for e in analysis.digest.events:
        if getattr(e, 'kind', None) == kind and all(
                getattr(e, k) == v for k, v in fields.items()):
            return True
    return False


def last_event_is(analysis, kind, **fields):
    events = analysis.digest.events
    return bool(events) and getattr(events[-1], 'kind', None) == kind and all(
        getattr(events[-1], k) == v for k, v in fields.items())


class Walk:
    """One boot driven beat by beat; checks a valid digest at every beat
    with a frame counter above the previous beat's.
    """

    def __init__(self, guest, watcher):
        self.guest = guest
        self.watcher = watcher
        self.beats = []

    def beat(self, what, predicate, timeout=BEAT_TIMEOUT):
        analysis = self.watcher.wait_for(predicate, timeout, what)
        d = analysis.digest
        assert d.schema_version == pl.SCHEMA_VERSION
        if self.beats:
            prev = self.beats[-1][1].digest.frame_counter
            assert d.frame_counter > prev, (
                'beat %r: frame counter %d not above the previous beat\'s %d'
                % (what, d.frame_counter, prev))
        self.beats.append((what, analysis))
        return analysis

    def boot(self):
        self.guest.wait_serial(contract.BANNER, BANNER_TIMEOUT,
                               'the Sextant banner')
        # Awaiting: the first refresh is frame 1 and no event exists yet.
        a = self.beat('Awaiting', lambda a: True)
        assert a.frame_size == contract.DEFAULT_MODE
        assert a.origin == fbhash.digest_origin(*contract.DEFAULT_MODE)
        assert a.digest.frame_counter >= 1
        assert a.digest.events == ()
        assert set(a.digest.hashes.values()) == {0}
        return a

    def enter_booting(self):
        self.guest.send_key('Enter')
        return self.beat('awaiting->booting in the chains',
                         lambda a: a.digest.hashes['scene_transition'] != 0)

    def reach_prompt(self):
        # The R/I/A prompt (row 21) is the last refresh before polling.
        return self.beat('the R/I/A prompt line (row 21)',
                         lambda a: last_event_is(
                             a, 'line_rendered',
                             row=contract.BOOTLOADER_PROMPT_ROW)
                         and a.digest.hashes['bootloader_decision'] == 0)

    def ignore(self, attempt=1):
        self.guest.send_key('i')
        return self.beat('the paste prompt (row 25) after Ignore',
                         lambda a: last_event_is(
                             a, 'line_rendered',
                             row=contract.PASTE_PROMPT_ROW)
                         and a.digest.hashes['bootloader_decision'] != 0)

    def to_paste_prompt(self):
        """From Awaiting: Enter, the R/I/A prompt, then Ignore."""
        self.enter_booting()
        self.reach_prompt()
        return self.ignore()

    def paste(self, text):
        self.guest.type_text(text)
        # Every printable key is echoed with a refresh: wait for the last.
        self.beat('the echo of %r' % text[-1],
                  lambda a: last_event_is(a, 'keypress',
                                          unicode=ord(text[-1])))
        self.guest.send_key('Enter')

    def reach_parked(self):
        return self.beat('booting->parked',
                         lambda a: has_event(a, 'scene_transition',
                                             from_phase=contract.BOOTING,
                                             to_phase=contract.PARKED))

    def exit_and_drain(self):
        """The exit key in Parked: drain, then ACPI power-off."""
        self.guest.send_key('Enter')
        self.guest.wait_exit(EXIT_TIMEOUT)
        drain = sdrain.parse(self.guest.serial_text())
        assert drain.complete, ('no refresh_stats line in the serial log:\n%s'
                                % self.guest.serial_tail())
        return drain


def check_drain_against_digests(drain, frames):
    """Each decoded digest must be the state after some prefix of the drain:
    its eight channel hashes equal the replay of that prefix (§1.4) and its
    raw records are the newest records of that prefix that fit in 44 bytes
    (§1.5). Returns the prefix length of the last (newest) digest.
    """
    events = drain.to_events()
    assert len(events) < 256, 'ring overflow: the drain is not complete'
    prefix = {}
    state = dchains.ChannelChains()
    prefix[tuple(sorted(state.hashes.items()))] = 0
    for i, e in enumerate(events):
        state.update(e)
        prefix[tuple(sorted(state.hashes.items()))] = i + 1
    last_n, last_frame = 0, 0
    for a in sorted(frames, key=lambda a: a.digest.frame_counter):
        d = a.digest
        key = tuple(sorted(d.hashes.items()))
        assert key in prefix, (
            'digest frame %d: channel hashes %s are not the replay of any '
            'prefix of the drain' % (d.frame_counter, d.to_json()['hashes']))
        n = prefix[key]
        assert n >= last_n or d.frame_counter == last_frame, (
            'digest frame %d shows fewer events than an earlier frame'
            % d.frame_counter)
        window = list(d.events)
        assert window == events[n - len(window):n], (
            'digest frame %d raw records %s are not the newest %d drained '
            'events before #%d' % (d.frame_counter,
                                   [e.to_json() for e in window],
                                   len(window), n))
        size = sum(len(e.tlv()) for e in window)
        assert size <= pl.RAW_BUDGET
        if n > len(window):
            older = events[n - len(window) - 1]
            assert size + len(older.tlv()) > pl.RAW_BUDGET, (
                'digest frame %d left out %s although it fits the raw budget'
                % (d.frame_counter, older.to_json()))
        last_n, last_frame = n, d.frame_counter
    return last_n


def check_clock(drain):
    ts = [r.t for r in drain.records]
    assert ts == sorted(ts), 't= is not monotonic: %s' % ts


def normalise_stream_exercise(types):
    """A newer Sextant goes awaiting->stream_exercise->booting (§1.9)."""
    out = []
    for item in types:
        if item == ('transition', 'awaiting', 'stream_exercise'):
            continue
        if item == ('transition', 'stream_exercise', 'booting'):
            item = ('transition', 'awaiting', 'booting')
        out.append(item)
    return out


def drain_shape(drain):
    shape = []
    for r in drain.records:
        f = r.fields
        if r.type == 'keypress':
            shape.append(('keypress', f['unicode'], f['scancode']))
        elif r.type == 'line':
            shape.append(('line', f['row']))
        elif r.type == 'transition':
            shape.append(('transition', f['from'], f['to']))
        elif r.type == 'bootloader_decision':
            shape.append(('decision', f['choice'], f['attempt']))
        elif r.type == 'paste':
            shape.append(('paste', f['len'], f['correct']))
        else:
            shape.append((r.type,))
    return normalise_stream_exercise(shape)


def canonical_shape():
    """The §4.3 transcript as (type, fields) without t=."""
    enter = ('keypress', 0x0d, 0)
    shape = [enter, ('transition', 'awaiting', 'booting')]
    shape += [('line', row) for row in range(0, 22)]
    shape += [('keypress', ord('i'), 0), ('decision', 'ignore', 1),
              ('line', 21), ('line', 23), ('line', 25)]
    shape += [('keypress', ord(c), 0) for c in contract.PASTE_SECRET]
    shape += [enter, ('paste', len(contract.PASTE_SECRET), True),
              ('line', 21), ('line', 22),
              ('transition', 'booting', 'parked'),
              enter, ('transition', 'parked', 'parked')]
    return shape


# ---- the tests ----------------------------------------------------------

@pytest.fixture
def new_walk(qemu_guest, sextant_image, digest_watcher):
    """A fresh guest of the Sextant image with its digest watcher, as a
    Walk (not yet booted).
    """
    def make(name):
        guest = qemu_guest(sextant_image, name=name)
        return Walk(guest, digest_watcher(guest))
    return make


def test_canonical_walk(new_walk):
    """Awaiting -> Enter -> Booting -> i -> paste -> Parked -> Enter, with
    the banner, digests at every beat, framebuffer hashes, the §4.3 drain
    and the drain/digest cross-check.
    """
    walk = new_walk('canonical')
    guest, watcher = walk.guest, walk.watcher
    walk.boot()

    serial = guest.serial_path.read_bytes()
    assert (contract.BANNER + '\r\n').encode() in serial
    modes = sdrain.parse(serial).gop_modes
    assert modes and contract.DEFAULT_MODE in modes, modes

    # Quiescent Awaiting: the trailer is the host-recomputed hash.
    watcher.framebuffer_hash_matches()

    walk.to_paste_prompt()
    walk.paste(contract.PASTE_SECRET)
    walk.reach_parked()
    parked = watcher.framebuffer_hash_matches()
    assert parked.digest.hashes['paste_received'] != 0
    last_seen = max(a.digest.frame_counter for a in watcher.frames)

    drain = walk.exit_and_drain()
    sx.match_ordered(drain, sx.CANONICAL_WALK)
    assert drain_shape(drain) == normalise_stream_exercise(canonical_shape())
    check_clock(drain)

    lines = [r for r in drain.records if r.type == 'line'][:19]
    for a, b in zip(lines, lines[1:]):
        assert b.t - a.t >= contract.BOOT_LINE_MS, (a.text, b.text)
    keys = [r for r in drain.records if r.type == 'keypress'][2:25]
    for a, b in zip(keys, keys[1:]):
        assert b.t - a.t >= contract.POLL_MS, (a.text, b.text)

    # refresh_stats count is the last frame number, and one refresh at
    # least follows the last frame we saw (the exit key's).
    assert drain.refresh_stats['count'] > last_seen

    # The last digest seen equals the drain replayed less the events of
    # the exit key, which came after it.
    n = check_drain_against_digests(drain, watcher.frames)
    rest = drain.to_events()[n:]
    assert [e.kind for e in rest] == ['keypress', 'scene_transition'], rest
    assert (rest[1].from_phase, rest[1].to_phase) == ('parked', 'parked')


def test_mode_keys_retry_and_wrong_paste(new_walk):
    """Mode keys 1, then 0 interrupted by 3, in Awaiting (the QR moves, the
    hash holds at 640x480); a mode key ignored at the R/I/A prompt; Retry;
    Ignore; one wrong paste; then the correct one and the drain.
    """
    walk = new_walk('paths')
    guest, watcher = walk.guest, walk.watcher
    walk.boot()

    guest.send_key('1')
    a = walk.beat('a 640x480 frame after key 1',
                  lambda a: a.frame_size == (640, 480)
                  and a.digest.hashes['mode_switch'] != 0)
    assert a.origin == fbhash.digest_origin(640, 480) == (444, 268)
    time.sleep(3)   # the 1.5 s toast (synthetic clock) ends with a repaint
    watcher.framebuffer_hash_matches()

    # Key 0 walks the GOP modes (1 s each); a mode key interrupts the walk
    # and is applied.
    guest.send_key('0')
    walk.beat('the key-0 walk past 640x480',
              lambda a: a.frame_size != (640, 480)
              and a.digest.hashes['mode_switch'] != 0)
    guest.send_key('3')
    a = walk.beat('a 1024x768 frame after key 3',
                  lambda a: a.frame_size == (1024, 768)
                  and a.digest.hashes['mode_cycle'] != 0
                  and has_event(a, 'mode_switch', app_w=1024, app_h=768))
    assert a.origin == (828, 556)

    walk.enter_booting()
    walk.reach_prompt()
    guest.send_key('2')          # mode keys are inert in the bootloader
    time.sleep(0.5)
    guest.send_key('r')
    a = walk.beat('the prompt re-rendered after Retry',
                  lambda a: has_event(a, 'bootloader_decision',
                                      choice='retry', attempt=1)
                  and last_event_is(a, 'line_rendered', row=21), timeout=90)
    assert a.frame_size == (1024, 768)

    walk.ignore()
    guest.type_text('abc')
    guest.send_key('Enter')
    walk.beat('the wrong-paste indicator (row 26)',
              lambda a: has_event(a, 'paste_received', length=3,
                                  correct=False)
              and has_event(a, 'line_rendered', row=26))

    walk.paste(contract.PASTE_SECRET)
    walk.reach_parked()
    drain = walk.exit_and_drain()

    sx.match_ordered(drain, (
        sx.Rec('keypress', unicode=ord('1')),
        sx.Rec('mode_switch', requested=[640, 480], applied=[640, 480]),
        sx.Rec('keypress', unicode=ord('0')),
        sx.AtLeast(2, sx.Rec('mode_switch')),
        sx.Rec('mode_cycle', interrupted=True),
        sx.Rec('mode_switch', requested=[1024, 768], applied=[1024, 768]),
        sx.Rec('keypress', unicode=0x0d),
        sx.LEAVE_AWAITING,
        sx.AtLeast(19, sx.Rec('line')),
        sx.Rec('line', row=21),
        sx.Rec('keypress', unicode=ord('2')),
        sx.Rec('bootloader_decision', choice='retry', attempt=1),
        sx.Rec('line', row=21),
        sx.Rec('bootloader_decision', choice='ignore', attempt=2),
        sx.Rec('line', row=25),
        sx.Rec('paste', len=3, correct=False),
        sx.Rec('line', row=26),
        sx.Rec('paste', len=len(contract.PASTE_SECRET), correct=True),
        sx.transition(contract.BOOTING, contract.PARKED),
        sx.Rec('keypress'),
        sx.transition(contract.PARKED, contract.PARKED),
        sx.Rec(contract.REFRESH_STATS),
    ))
    cycle = [r for r in drain.records if r.type == 'mode_cycle']
    assert len(cycle) == 1 and cycle[0]['count'] >= 2, cycle
    # Nothing switches the mode once Booting starts (the `2` at the prompt).
    booting = next(i for i, r in enumerate(drain.records)
                   if r.type == 'transition' and r['from'] == 'awaiting')
    late = [r.text for r in drain.records[booting:]
            if r.type == 'mode_switch']
    assert late == [], late
    check_clock(drain)
    check_drain_against_digests(drain, watcher.frames)


@pytest.mark.slow
def test_paste_timeout(new_walk):
    """60 s without a key at the paste prompt: BootloaderTimeout, the 30 s
    countdown, the halt line, then power-off without a drain (§4.1, §5.3).
    """
    walk = new_walk('timeout')
    guest = walk.guest
    walk.boot()
    walk.to_paste_prompt()
    t_prompt = time.monotonic()

    # No refresh while idle; poll slowly to leave the CPU to the guest.
    walk.beat('BootloaderTimeout in the chains',
              lambda a: a.digest.hashes['bootloader_timeout'] != 0,
              timeout=120)
    assert time.monotonic() - t_prompt >= contract.PASTE_TIMEOUT_S - 10
    t_timeout = time.monotonic()
    walk.beat('the halt line (row 23) after the countdown',
              lambda a: a.digest.hashes['bootloader_timeout'] != 0
              and last_event_is(a, 'line_rendered', row=23), timeout=90)
    guest.wait_exit(EXIT_TIMEOUT)
    assert time.monotonic() - t_timeout >= 30

    drain = sdrain.parse(guest.serial_text())
    assert drain.banner_seen
    assert drain.records == [] and not drain.complete, (
        'the timeout path must not drain: %s' % guest.serial_tail())


def assert_no_drain(guest, why):
    """The serial log holds the banner and no drain record at all (§4.1)."""
    text = guest.serial_text()
    drain = sdrain.parse(text)
    assert drain.banner_seen, 'no banner on serial:\n%s' % guest.serial_tail()
    assert drain.records == [] and not drain.complete, (
        '%s must not drain (§4.1), but serial holds %d records%s:\n%s'
        % (why, len(drain.records),
           ' and refresh_stats' if drain.complete else '',
           guest.serial_tail()))
    assert 'type=' not in text and contract.REFRESH_STATS not in text, (
        '%s: drain text on serial:\n%s' % (why, guest.serial_tail()))


def test_abort_cold_reset(new_walk):
    """Abort at the R/I/A prompt: an immediate COLD reset, which under
    -no-reboot ends qemu, with no refresh after the decision and no drain
    (§4.1 item 4, §5.3 step 3, pitfall 13).
    """
    walk = new_walk('abort')
    guest, watcher = walk.guest, walk.watcher
    assert '-no-reboot' in guest.argv, guest.argv
    walk.boot()
    walk.enter_booting()
    prompt = walk.reach_prompt()
    assert prompt.digest.hashes['bootloader_decision'] == 0
    assert not any(has_event(a, 'bootloader_decision')
                   for a in watcher.frames)

    guest.send_key('a')
    t_key = time.monotonic()
    # The Abort is not observable on either channel (§5.3 step 3): keep
    # capturing until qemu goes, but expect nothing of the frames beyond
    # never showing an abort decision.
    deadline = t_key + ABORT_EXIT_TIMEOUT
    while guest.alive and time.monotonic() < deadline:
        try:
            watcher.capture()
        except Exception as exc:
            # qemu exiting under a screendump; anything else is a failure.
            try:
                guest.proc.wait(5)
            except subprocess.TimeoutExpired:
                raise exc from None
            break
        time.sleep(0.25)
    rc = guest.wait_exit(max(1, deadline - time.monotonic()))
    assert rc == 0, 'qemu exit code %s after Abort: %s' % (rc,
                                                           guest.qemu_log())
    aborts = [a.digest.frame_counter for a in watcher.frames
              if has_event(a, 'bootloader_decision', choice=contract.ABORT)]
    assert aborts == [], ('an abort decision was observed in frames %s; '
                          'Abort must reset with no refresh' % aborts)
    assert_no_drain(guest, 'Abort (a cold reset)')


def test_three_wrong_pastes(new_walk):
    """Three wrong pastes: PasteReceived(len, false) and the row-26 attempt
    indicator after the first two; the third goes straight to the timeout
    path (BootloaderTimeout, the 30..00 countdown on row 21, the halt line
    on row 23, 5 s, power-off) with no drain (§4.1, §5.3 steps 7-8).
    """
    walk = new_walk('three-wrong')
    guest, watcher = walk.guest, walk.watcher
    walk.boot()
    walk.to_paste_prompt()

    # Distinct lengths tell the three PasteReceived records apart.
    payloads = ['x', 'xy', 'xyz']
    assert contract.PASTE_SECRET not in payloads
    paste_hash = 0
    for attempt, text in enumerate(payloads[:2], start=1):
        walk.paste(text)
        a = walk.beat('wrong paste %d (len %d) and the attempt indicator '
                      '(row 26)' % (attempt, len(text)),
                      lambda a, n=len(text): has_event(
                          a, 'paste_received', length=n, correct=False)
                      and has_event(a, 'line_rendered', row=26))
        assert a.digest.hashes['paste_received'] not in (0, paste_hash)
        assert a.digest.hashes['bootloader_timeout'] == 0, (
            'BootloaderTimeout after wrong paste %d of %d'
            % (attempt, contract.MAX_WRONG_PASTES))
        paste_hash = a.digest.hashes['paste_received']

    walk.paste(payloads[2])
    t_third = time.monotonic()
    first = walk.beat('BootloaderTimeout in the chains after the third '
                      'wrong paste',
                      lambda a: a.digest.hashes['bootloader_timeout'] != 0)
    t_timeout = time.monotonic()
    # The third PasteReceived was chained before the timeout.
    assert first.digest.hashes['paste_received'] != paste_hash
    assert not any(has_event(a, 'paste_received', correct=True)
                   for a in watcher.frames)
    for a in watcher.frames:
        if has_event(a, 'bootloader_timeout'):
            kinds = [e.kind for e in a.digest.events]
            i = kinds.index('bootloader_timeout')
            if i:
                prev = a.digest.events[i - 1]
                assert (prev.kind, getattr(prev, 'length', None),
                        getattr(prev, 'correct', None)) == (
                    'paste_received', 3, False), a.digest.to_json()

    # The countdown: one refresh per tick (30..00) with no new event,
    # then the halt line. Poll gently to leave the CPU to the guest.
    halt = watcher.wait_for(
        lambda a: a.digest.hashes['bootloader_timeout'] != 0
        and last_event_is(a, 'line_rendered', row=23),
        COUNTDOWN_TIMEOUT, 'the halt line (row 23) after the countdown',
        interval=0.5)
    t_halt = time.monotonic()
    ticks = sorted({a.digest.frame_counter for a in watcher.frames
                    if first.digest.frame_counter <= a.digest.frame_counter
                    < halt.digest.frame_counter})
    assert halt.digest.frame_counter - first.digest.frame_counter >= 31, (
        'only %d refreshes between BootloaderTimeout (frame %d) and the halt '
        'line (frame %d); the countdown is 31 ticks' % (
            halt.digest.frame_counter - first.digest.frame_counter,
            first.digest.frame_counter, halt.digest.frame_counter))
    assert len(ticks) >= 10, 'countdown frames seen: %s' % ticks
    # One BootloaderTimeout, and no paste after it.
    for a in watcher.frames:
        if a.digest.frame_counter > first.digest.frame_counter:
            for channel in ('bootloader_timeout', 'paste_received'):
                assert a.digest.hashes[channel] == \
                    first.digest.hashes[channel], (
                        'frame %d: the %s chain moved during the countdown: '
                        '%s' % (a.digest.frame_counter, channel,
                                a.digest.to_json()))
    assert t_halt - t_timeout >= 28, (
        'the countdown took %.1f s, not 30' % (t_halt - t_timeout))

    guest.wait_exit(max(1, t_third + THREE_WRONG_EXIT_TIMEOUT
                        - time.monotonic()))
    t_exit = time.monotonic()
    assert t_exit - t_halt >= 3, (
        'power-off %.1f s after the halt line, not 5 s' % (t_exit - t_halt))
    assert_no_drain(guest, 'the third wrong paste (the timeout path)')


def test_build_is_noop_second_time(tmp_path):
    """images/build.sh skips the build when nothing changed."""
    if os.environ.get('SEXTANT_IMAGE'):
        pytest.skip('SEXTANT_IMAGE set: not testing our build')
    env = dict(os.environ, IMAGES_OUT=str(tmp_path))
    cmd = ['bash', str(REPO_ROOT / 'images/build.sh'), 'sextant']
    first = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    qcow = tmp_path / 'sextant.qcow2'
    img = tmp_path / 'sextant.img'
    assert qcow.stat().st_size > 0 and img.stat().st_size >= 33 * 2 ** 20
    before = (qcow.stat().st_mtime_ns, img.stat().st_mtime_ns)
    t0 = time.monotonic()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert 'up to date' in second.stdout, second.stdout
    assert (qcow.stat().st_mtime_ns, img.stat().st_mtime_ns) == before
    assert time.monotonic() - t0 < 10
