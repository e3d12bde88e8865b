"""report.md: what a person reads instead of the logs.

The verdict first, then each check's verdict, the beats with their
screenshots inline, the phase times, a merged timeline (keys sent, beats,
digests, and drain events placed at the first digest whose channel hashes
prove them), the serial drain, and the list of files kept.
"""

import time

from kerbside_tempest_plugin.scenario import capture as cap
from kerbside_tempest_plugin.scenario import checks as checks_mod
from kerbside_tempest_plugin.scenario import frames as frames_mod


def _md_escape(text):
    return str(text).replace('|', '\\|').replace('\n', ' ')


def drain_visibility(events, digests):
    """For each drain event, the first digest whose hashes prove it.

    Returns a list (per drain event) of CapturedDigest or None. A digest
    proves event i when its hashes equal the chains of a prefix longer
    than i.
    """
    if not events or not digests:
        return [None] * len(events)
    prefixes = checks_mod.prefix_hashes(events)
    index = {}
    for k, h in enumerate(prefixes):
        index.setdefault(tuple(sorted(h.items())), k)
    out = [None] * len(events)
    covered = 0
    for cd in digests:
        k = index.get(tuple(sorted(cd.hashes.items())))
        if k is None or k <= covered:
            continue
        for i in range(covered, k):
            out[i] = cd
        covered = k
    return out


def timeline(walker=None, stream=None, drain_events=(), limit=600):
    """Rows (seconds, source, text) in time order."""
    rows = []
    if walker is not None:
        for at, key in walker.keys:
            rows.append((at, 'key', 'sent %s' % key))
        for b in walker.beats:
            rows.append((b.started, 'beat', 'begin %s: %s' % (b.name,
                                                              b.what)))
            if b.ended is not None:
                rows.append((b.ended, 'beat', b.describe()))
    digests = stream.snapshot() if stream is not None else []
    for cd in digests:
        rows.append((cd.at, 'digest', 'frame %d %dx%d%s: %s' % (
            cd.frame_counter, cd.frame_size[0], cd.frame_size[1],
            {True: ' fb=ok', False: ' fb=MISMATCH', None: ''}[
                cd.framebuffer_hash_ok], '; '.join(cd.records_text()))))
    visible = drain_visibility(list(drain_events), digests)
    end = max([r[0] for r in rows] or [0])
    for i, (event, cd) in enumerate(zip(drain_events, visible)):
        text = 'drain #%d %s' % (i, cap.describe_event(event))
        if cd is None:
            rows.append((end + 1e-3 * (i + 1), 'drain',
                         text + ' (after the last digest)'))
        else:
            rows.append((cd.at - 1e-6 * (len(drain_events) - i), 'drain',
                         text + ' (proven by frame %d)' % cd.frame_counter))
    rows.sort(key=lambda r: r[0])
    if len(rows) > limit:
        rows = rows[:limit // 2] + [(None, '...', '%d rows omitted'
                                     % (len(rows) - limit))] + \
            rows[-limit // 2:]
    return rows


def missed_frames_md(evidence):
    """The grab pipeline's counters and every missed frame counter with
    the gap it fell in (capture.fidelity_evidence), as Markdown lines.
    """
    if not evidence:
        return []
    p = evidence['pipeline']
    out = ['- grabs: %d (%s; unchanged, not judged: %d; dropped unjudged: '
           '%d; most waiting for the judge: %d of %d); median ms: grab %s, '
           'decode %s, QR %s, hash %s, judge %s' % (
               p['grabs'], p['format'], p['unchanged'], p['dropped'],
               p['max_queued'], p['max_pending'],
               p['grab']['median_ms'], p['decode']['median_ms'],
               p['qr']['median_ms'], p['hash']['median_ms'],
               p['judge']['median_ms']), '']
    count = evidence.get('refresh_count')
    if not count:
        return out + ['(no refresh_stats count: missed frames unknown)', '']
    missed = evidence['missed']
    out += ['### Missed frames', '',
            '%d of the %d frames the guest drew were never seen. Each row: '
            'the grabs either side of the gap it fell in, the gap between '
            'them and the median grab (a gap shorter than one grab could '
            'not be caught), and what the grabs between did.' % (
                max(0, count - evidence['distinct']), count), '']
    if missed:
        out += ['| frame | after (frame @ s) | before (frame @ s) | gap ms '
                '| grab ms | between: undecodable / dropped / unchanged '
                '| why |', '|---|---|---|---|---|---|---|']
        for r in missed:
            out.append('| %d | %s | %s | %s | %s | %d / %d / %d | %s |' % (
                r['frame'], _at(r['after_frame'], r['after_at_s']),
                _at(r['before_frame'], r['before_at_s']),
                '-' if r['gap_ms'] is None else r['gap_ms'],
                '-' if r['grab_ms'] is None else r['grab_ms'],
                r['undecodable_between'], r['dropped_between'],
                r['unchanged_between'], _md_escape(r['why'])))
        out.append('')
    return out


def frame_states_md(results):
    """The per-frame check (scenario.frames) as Markdown lines: the
    counts, then one row per frame that did not verify.
    """
    section = frames_mod.report_section(results)
    if section is None:
        return []
    out = ['### Frames on the wire', '', section['headline'], '']
    if section['rows']:
        out += ['| %s |' % ' | '.join(frames_mod.REPORT_COLUMNS),
                '|---' * len(frames_mod.REPORT_COLUMNS) + '|']
        out += ['| %s |' % ' | '.join(_md_escape(c) for c in row)
                for row in section['rows']]
        out.append('')
    return out


def _at(frame, at):
    return '-' if frame is None else '%d @ %.3f' % (frame, at)


def render(title, meta, results=(), walker=None, stream=None,
           drain_events=(), drain_text=None, phases=None, files=(),
           error=None, cause=None):
    """The Markdown text of a report. `cause`: the one cause of a failed
    run (runner.RunResult.cause()), shown under the verdict; checks NOT
    RUN are listed apart from the failures.
    """
    results = list(results)
    failed = [r for r in results if r.failed]
    not_run = [r for r in results if not r.ran]
    beats_failed = walker is not None and any(not b.ok for b in
                                              walker.beats)
    blocking = [r for r in not_run if not frames_mod.advisory(r)]
    passed = not failed and not blocking and error is None and \
        not beats_failed
    out = ['# %s' % title, '',
           '**Verdict: %s**' % ('PASS' if passed else 'FAIL'), '']
    if cause and not passed:
        out += ['Cause: `%s`' % str(cause).replace('`', "'"), '']
    if not_run:
        out += ['Not run (their input does not exist; not counted as '
                'failures): %s.' % ', '.join(r.name for r in not_run), '']
    for k, v in meta.items():
        out.append('- %s: `%s`' % (k, v))
    out.append('- report written: %s' % time.strftime(
        '%Y-%m-%d %H:%M:%S UTC', time.gmtime()))
    out.append('')
    if error:
        out += ['## Error', '', '```', str(error), '```', '']

    out += ['## Checks', '', '| check | verdict | summary |',
            '|---|---|---|']
    for r in results:
        out.append('| %s | %s | %s |' % (r.name, r.verdict,
                                         _md_escape(r.summary)))
    if not results:
        out.append('| (none run) | | |')
    out.append('')
    for r in results:
        if r.details:
            out += ['### %s' % r.name, '', '```'] + \
                [str(d) for d in r.details] + ['```', '']

    if phases:
        out += ['## Phase times', '', '| phase | seconds |', '|---|---|']
        for k, v in phases.items():
            out.append('| %s | %s |' % (k, '-' if v is None else
                                        '%.2f' % v))
        out.append('')

    if stream is not None:
        s = stream.summary()
        fb = stream.fb_stats()
        out += ['## Capture', '',
                '- captures: %d (new frames %d, repeats %d, decode '
                'failures %d, screenshot failures %d)' % (
                    s['captures_total'], s['digests_total'],
                    s['repeats_total'], s['decode_failures_total'],
                    s['screenshot_failures_total']),
                '- surface_drawn events: %d' % s['surface_drawn'],
                '- framebuffer hash: matched %d of %d checked captures' % (
                    fb['matched'], fb['checked']),
                '- decode errors by kind: %s' % (s['errors'] or 'none'), '']
        out += missed_frames_md(cap.fidelity_evidence(stream, results))
    out += frame_states_md(results)

    if walker is not None:
        out += ['## Beats', '']
        for b in walker.beats:
            head = '### %d. %s: %s' % (b.index, b.name,
                                       'ok' if b.ok else 'FAILED')
            out += [head, '', '- waited for: %s' % b.what]
            if b.elapsed is not None:
                out.append('- took %.2f s (from %.2f s)' % (b.elapsed,
                                                            b.started))
            if b.frame_counter is not None:
                out.append('- frame %d at %dx%d%s' % (
                    b.frame_counter, b.frame_size[0], b.frame_size[1],
                    ' (inferred from channel hashes)' if b.inferred
                    else ''))
            if b.records:
                out.append('- records: %s' % '; '.join(b.records))
            if b.note:
                out.append('- note: %s' % b.note)
            if b.error:
                out += ['- error:', '', '```', b.error, '```']
            if b.screenshot:
                out += ['', '![%s](%s)' % (b.name, b.screenshot)]
            out.append('')

    rows = timeline(walker, stream, drain_events)
    if rows:
        out += ['## Timeline', '',
                'Seconds since the capture started. Drain events are '
                'placed at the first digest whose channel hashes include '
                'them.', '', '| s | source | what |', '|---|---|---|']
        for at, src, text in rows:
            out.append('| %s | %s | %s |' % (
                '' if at is None else '%.3f' % at, src, _md_escape(text)))
        out.append('')

    if drain_text:
        out += ['## Serial drain', '', '```', drain_text.rstrip(), '```',
                '']
    if files:
        out += ['## Files', ''] + ['- [%s](%s)' % (f, f)
                                   for f in sorted(files)] + ['']
    return '\n'.join(out)
