"""report.html beside report.md, and one index page per job run.

`write(art, result, walker, stream, drain_events, ...)` runs at the end of
a scenario run: it keeps what the page needs that is not on disk yet
(``timeline.json``: keys, beats, digests and drain events on one clock;
``frames/``: the PNG of every decoded digest frame, at most
`MAX_FRAMES`, always the last `LAST_FRAMES`; ``frames.json``), then
`build(path)` renders ``report.html`` from the directory alone, so a page
can be rebuilt later from saved artifacts. `write_index(root)` lists every
report under `root` in ``index.html``.

Images are relative files in the same directory, not data URIs: the beat
PNGs are kept there anyway (report.md links them), inlining them would
add a third to every byte kept, and a CI artifact is the whole directory.
Nothing else is external: the styles, the timeline (inline SVG) and the
frame player are in the page, and it loads nothing from the network.

Layout, top to bottom: the verdict line; on failure a box with the one
cause (the failed beat, or the error), any other failed check, the checks
NOT RUN (grey, not failures) and the last frames before the deadline
expired (visible without scrolling); the checks with their evidence; the
timeline; the beats with their screenshots; the frame player (ryll's
display.mp4 when it wrote one, else the decoded frames); ryll's evidence;
phases; files; the serial drain.
"""

import argparse
import html
import json
import os
import sys
import time

MAX_FRAMES = 150
LAST_FRAMES = 6
LANES = ('key', 'beat', 'digest', 'drain')
COLOURS = {'key': '#1f77b4', 'beat': '#2ca02c', 'digest': '#7f7f7f',
           'drain': '#9467bd', 'fail': '#d62728'}


def _e(text):
    return html.escape('' if text is None else str(text), quote=True)


# ------------------------------------------------------ inputs on disk


def _frame_name(cd):
    return 'frames/f%05d-c%d.png' % (cd.index, cd.frame_counter)


def save_frames(art, stream):
    """The decoded frames' PNGs into frames/ (bounded); frames.json."""
    digests = [cd for cd in (stream.snapshot() if stream else [])
               if cd.png]
    if len(digests) > MAX_FRAMES:
        head = digests[:-LAST_FRAMES]
        step = len(head) / float(MAX_FRAMES - LAST_FRAMES)
        keep = [head[int(i * step)] for i in range(MAX_FRAMES -
                                                   LAST_FRAMES)]
        digests = keep + digests[-LAST_FRAMES:]
    os.makedirs(art.file('frames'), exist_ok=True)
    frames = []
    for cd in digests:
        name = _frame_name(cd)
        with open(art.file(name), 'wb') as f:
            f.write(cd.png)
        frames.append({'file': name, 'at': round(cd.at, 4),
                       'frame_counter': cd.frame_counter,
                       'records': cd.records_text()})
    art.write_json('frames.json', frames)
    return frames


def write(art, result, walker=None, stream=None, drain_events=(),
          drain_text=None, phases=None, meta=None):
    """Keep the page's inputs, then render report.html and the index of
    the artifact root. Returns the report's path.
    """
    from kerbside_tempest_plugin.scenario import report as report_mod
    rows = report_mod.timeline(walker, stream, list(drain_events),
                               limit=5000)
    art.write_json('timeline.json', [
        {'at': at, 'source': src, 'text': text} for at, src, text in rows])
    save_frames(art, stream)
    from kerbside_tempest_plugin.scenario import capture as cap
    evidence = cap.fidelity_evidence(
        stream, getattr(result, 'results', None) or ())
    if evidence is not None:
        art.write_json('missed_frames.json', evidence)
    art.write_json('report-inputs.json', {
        'meta': meta or {}, 'phases': phases or {}})
    path = build(art.path)
    art._note('report.html')
    write_index(os.path.dirname(art.path))
    return path


def _load(path, name, default):
    try:
        with open(os.path.join(path, name)) as f:
            if name.endswith('.jsonl'):
                return [json.loads(line) for line in f if line.strip()]
            return json.load(f)
    except (OSError, ValueError):
        return default


# ------------------------------------------------------------ timeline


def timeline_svg(rows, beats, width=1100, lane_h=26):
    """Keys, beats (spans), digests and drain events on one time axis."""
    pts = [r for r in rows if r.get('at') is not None]
    spans = [(b.get('started'), b.get('ended') if b.get('ended')
              is not None else b.get('started'), b) for b in beats
             if b.get('started') is not None]
    times = [r['at'] for r in pts] + [s for s, _, _ in spans] + \
        [e for _, e, _ in spans]
    if not times:
        return '<p id="timeline-empty">(no timeline: nothing was ' \
               'captured)</p>'
    t0, t1 = min(0.0, min(times)), max(times)
    t1 = t1 if t1 > t0 else t0 + 1.0
    left, right, top = 70, 20, 10
    plot_w = width - left - right
    height = top + lane_h * len(LANES) + 34

    def x(t):
        return left + (t - t0) / (t1 - t0) * plot_w

    def y(lane):
        return top + LANES.index(lane) * lane_h + lane_h / 2.0
    out = ['<svg id="timeline" xmlns="http://www.w3.org/2000/svg" '
           'width="%d" height="%d" viewBox="0 0 %d %d" role="img" '
           'aria-label="timeline of keys, beats, digests and drain '
           'events">' % (width, height, width, height)]
    for lane in LANES:
        out.append('<text x="4" y="%.1f" class="lane">%s</text>'
                   % (y(lane) + 4, lane))
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" '
                   'stroke="#ddd"/>' % (left, width - right, y(lane),
                                        y(lane)))
    axis_y = top + lane_h * len(LANES) + 4
    out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>'
               % (left, width - right, axis_y, axis_y))
    step = _tick_step(t1 - t0)
    t = 0.0
    while t <= t1 + 1e-9:
        if t >= t0:
            out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" '
                       'stroke="#333"/><text x="%.1f" y="%d" '
                       'class="tick">%gs</text>' % (
                           x(t), x(t), axis_y, axis_y + 5, x(t) - 6,
                           axis_y + 18, round(t, 3)))
        t += step
    for start, end, b in spans:
        colour = COLOURS['beat'] if b.get('ok') else COLOURS['fail']
        out.append('<rect class="beat-span" x="%.1f" y="%.1f" width="%.1f"'
                   ' height="%d" fill="%s" opacity="0.35"><title>%s'
                   '</title></rect>' % (
                       x(start), y('beat') - 8, max(x(end) - x(start), 2),
                       16, colour, _e('%s: %s' % (b.get('name'),
                                                  'ok' if b.get('ok')
                                                  else 'FAILED'))))
    for r in pts:
        src = r['source'] if r['source'] in LANES else 'beat'
        cx, cy = x(r['at']), y(src)
        tip = '<title>%.3f s %s: %s</title>' % (r['at'], _e(src),
                                                _e(r['text']))
        colour = COLOURS['fail'] if 'FAIL' in r['text'] or \
            'MISMATCH' in r['text'] else COLOURS[src]
        if src == 'key':
            out.append('<line class="mark" x1="%.1f" x2="%.1f" y1="%.1f" '
                       'y2="%.1f" stroke="%s" stroke-width="2">%s</line>'
                       % (cx, cx, cy - 9, cy + 9, colour, tip))
        elif src == 'drain':
            out.append('<polygon class="mark" points="%.1f,%.1f %.1f,%.1f '
                       '%.1f,%.1f %.1f,%.1f" fill="%s">%s</polygon>' % (
                           cx, cy - 6, cx + 5, cy, cx, cy + 6, cx - 5, cy,
                           colour, tip))
        else:
            out.append('<circle class="mark" cx="%.1f" cy="%.1f" r="%d" '
                       'fill="%s">%s</circle>' % (
                           cx, cy, 3 if src == 'digest' else 4, colour,
                           tip))
    out.append('</svg>')
    return '\n'.join(out)


def _tick_step(span):
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300):
        if span / step <= 12:
            return float(step)
    return 600.0


# ---------------------------------------------------------------- page

CSS = """
body{font-family:sans-serif;margin:12px 18px;color:#111;max-width:1200px}
h1{font-size:1.3em;margin:4px 0}
.verdict{font-size:1.4em;font-weight:bold;padding:6px 10px;margin:0 0 8px}
.PASS{background:#e3f5e3;color:#14601a}.FAIL{background:#fde2e2;color:#8b0d0d}
.failures{border:2px solid #d62728;padding:6px 10px;margin:0 0 10px}
.failures h2{margin:2px 0 4px;font-size:1.1em;color:#8b0d0d}
.failed-check{margin:2px 0}
.failures pre{max-height:7em;overflow:auto;margin:2px 0 4px}
table{border-collapse:collapse;margin:4px 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;
vertical-align:top;font-size:.92em}
tr.fail td{background:#fde2e2}
tr.notrun td{background:#eee;color:#555}
.not-run{color:#555;margin:4px 0}
pre{background:#f6f6f6;padding:4px;white-space:pre-wrap;font-size:.85em}
.lane,.tick{font-size:11px;fill:#333}
figure{display:inline-block;margin:4px;vertical-align:top}
figure img{max-width:360px;border:1px solid #999}
figcaption{font-size:.85em;max-width:360px}
.last img{max-width:200px}
#player img,#player video{max-width:720px;border:1px solid #999}
.meta{font-size:.9em;color:#333}
"""

PLAYER_JS = """
(function(){
 var frames=%s, i=0, timer=null, img=document.getElementById('frame');
 var label=document.getElementById('frame-label');
 var slider=document.getElementById('frame-slider');
 function show(n){ if(!frames.length) return; i=(n+frames.length)%%
  frames.length; img.src=frames[i].file; slider.value=i;
  label.textContent='frame '+frames[i].frame_counter+' at '+
  frames[i].at.toFixed(2)+' s ('+(i+1)+'/'+frames.length+')'; }
 document.getElementById('play').onclick=function(){
  if(timer){clearInterval(timer);timer=null;this.textContent='play';}
  else{timer=setInterval(function(){show(i+1);},250);
  this.textContent='pause';}};
 slider.oninput=function(){show(parseInt(this.value,10));};
 show(0);
})();
"""


ROW_CLASS = {'PASS': 'pass', 'FAIL': 'fail', 'NOT RUN': 'notrun'}


def _verdict(r):
    from kerbside_tempest_plugin.scenario import checks
    return checks.verdict_of(r)


def _check_rows(results):
    out = ['<table id="checks"><tr><th>check</th><th>verdict</th>'
           '<th>summary and evidence</th></tr>']
    for r in results:
        verdict = _verdict(r)
        details = r.get('details') or []
        ev = ''
        if details:
            ev = '<details%s><summary>evidence (%d lines)</summary><pre>' \
                 '%s</pre></details>' % (
                     ' open' if verdict == 'FAIL' else '', len(details),
                     _e('\n'.join(str(d) for d in details)))
        out.append('<tr class="%s" id="check-%s"><td>%s</td><td>%s</td>'
                   '<td>%s%s</td></tr>' % (
                       ROW_CLASS[verdict], _e(r.get('name')),
                       _e(r.get('name')), verdict,
                       _e(r.get('summary')), ev))
    if not results:
        out.append('<tr class="fail"><td>(none run)</td><td>FAIL</td>'
                   '<td>no check ran (see the error)</td></tr>')
    out.append('</table>')
    return '\n'.join(out)


def _failures(result, beats, frames):
    """The box at the top of a failed run: its one cause first (the
    failed beat, under the beats check's anchor, else the error), then
    any other check that failed, then the checks not run, on one line.
    Every check that did not pass has an anchor failed-NAME in the box.
    """
    results = result.get('results', [])
    failed = [r for r in results if _verdict(r) == 'FAIL']
    not_run = [r for r in results if _verdict(r) == 'NOT RUN']
    bad_beats = [b for b in beats if not b.get('ok')]
    if result.get('passed'):
        return ''
    out = ['<section class="failures" id="failures"><h2>What failed</h2>']
    error = result.get('error')
    if bad_beats:
        # The beat is the cause; the error is its failure too (with the
        # state of ryll and the guest) unless something else went wrong.
        first = bad_beats[0].get('error') or ''
        shown = error if error and first and first in error else None
        out.append('<div class="failed-check cause" id="failed-beats">'
                   '<b>cause:</b>')
        for b in bad_beats:
            out.append('<div class="failed-check failed-beat" id="failed-'
                       'beat-%s"><b>beat %s FAILED</b> after %s s: <pre>%s'
                       '</pre></div>' % (
                           _e(b.get('name')), _e(b.get('name')),
                           _e('%.2f' % b['elapsed'] if b.get('elapsed')
                              is not None else '?'),
                           _e(shown if shown and b is bad_beats[0]
                              else b.get('error'))))
        out.append('</div>')
        failed = [r for r in failed if r.get('name') != 'beats']
        if error and not shown:
            out.append('<div class="failed-check" id="failed-error"><b>'
                       'error</b>: <pre>%s</pre></div>' % _e(error))
    elif error:
        out.append('<div class="failed-check cause" id="failed-error"><b>'
                   'cause: error</b>: <pre>%s</pre></div>' % _e(error))
    for r in failed:
        out.append('<div class="failed-check" id="failed-%s"><b>%s: FAIL'
                   '</b> %s</div>' % (_e(r.get('name')), _e(r.get('name')),
                                      _e(r.get('summary'))))
    groups = {}
    for r in not_run:
        groups.setdefault(r.get('summary'), []).append(r.get('name'))
    for summary, names in groups.items():
        out.append('<div class="not-run">NOT RUN, not counted as failures: '
                   '%s: %s</div>' % (', '.join(
                       '<span class="failed-check not-run-check" '
                       'id="failed-%s">%s</span>' % (_e(n), _e(n))
                       for n in names), _e(summary)))
    until = None
    if bad_beats and bad_beats[0].get('ended') is not None:
        until = bad_beats[0]['ended']
    last = [f for f in frames if until is None or f['at'] <= until]
    last = last[-LAST_FRAMES:]
    shots = [b['screenshot'] for b in bad_beats if b.get('screenshot')]
    if last or shots:
        out.append('<div class="last" id="last-frames">Last frames before '
                   '%s:<br>' % ('the deadline expired' if bad_beats
                                else 'the end'))
        for s in shots:
            out.append('<figure><img src="%s" alt="%s"><figcaption>%s '
                       '(screen at the deadline)</figcaption></figure>'
                       % (_e(s), _e(s), _e(s)))
        for f in last:
            out.append('<figure><img src="%s" alt="frame %s"><figcaption>'
                       'frame %s at %.2f s</figcaption></figure>' % (
                           _e(f['file']), f['frame_counter'],
                           f['frame_counter'], f['at']))
        out.append('</div>')
    out.append('</section>')
    return '\n'.join(out)


def _beats(beats):
    out = ['<section id="beats"><h2>Beats</h2>']
    for b in beats:
        cap = '%s. %s: %s. %s' % (b.get('index'), b.get('name'),
                                  'ok' if b.get('ok') else 'FAILED',
                                  b.get('what'))
        if b.get('elapsed') is not None:
            cap += ' (%.2f s from %.2f s)' % (b['elapsed'], b['started'])
        if b.get('frame_counter') is not None:
            cap += '; frame %s' % b['frame_counter']
        if b.get('records'):
            cap += '; ' + '; '.join(b['records'])
        if b.get('note'):
            cap += '; note: ' + b['note']
        img = '<img src="%s" alt="%s">' % (
            _e(b['screenshot']), _e(b.get('name'))) \
            if b.get('screenshot') else '<i>(no screenshot)</i>'
        out.append('<figure class="beat %s">%s<figcaption>%s</figcaption>'
                   '</figure>' % ('ok' if b.get('ok') else 'failed', img,
                                  _e(cap)))
    out.append('</section>')
    return '\n'.join(out)


def _player(frames, video):
    out = ['<section id="player"><h2>Frames</h2>']
    if video:
        out.append('<p>ryll\'s display capture:</p><video id="video" '
                   'src="%s" controls muted></video>' % _e(video))
    if frames:
        out.append('<p>The %d decoded digest frames the harness captured, '
                   'in order:</p><div><button id="play" type="button">play'
                   '</button> <input id="frame-slider" type="range" '
                   'min="0" max="%d" value="0"> <span id="frame-label">'
                   '</span></div><img id="frame" src="%s" alt="captured '
                   'frame">' % (len(frames), len(frames) - 1,
                                _e(frames[0]['file'])))
        js = json.dumps([{'file': f['file'], 'at': f['at'],
                          'frame_counter': f['frame_counter']}
                         for f in frames])
        out.append('<script>%s</script>' % (PLAYER_JS % js))
    elif not video:
        out.append('<p>(no frame was captured)</p>')
    out.append('</section>')
    return '\n'.join(out)


def _evidence(summary):
    if not summary:
        return ''
    out = ['<section id="ryll-evidence"><h2>ryll\'s evidence</h2>',
           '<p class="meta">capture %s, pedantic %s; %d pedantic report(s);'
           ' %s bytes kept. The pcaps hold each channel\'s SPICE messages '
           'after the link stage (decrypted, no ticket); open them with '
           '<code>tshark -r FILE -d tcp.port==5900,spice</code>.</p>' % (
               'on' if summary.get('capture') else 'off',
               'on' if summary.get('pedantic') else 'off',
               summary.get('pedantic_reports', 0),
               summary.get('bytes', 0))]
    if summary.get('files'):
        out.append('<table><tr><th>file</th><th>kind</th><th>bytes</th>'
                   '<th>contents</th><th>secret scan</th></tr>')
        for f in summary['files']:
            p = f.get('pcap')
            what = ('%d packets, %d bytes to the server, %d from it, '
                    '%.2f s' % (p['packets'], p['client_to_server_bytes'],
                                p['server_to_client_bytes'], p['span_s'])
                    if p else f.get('pcap_error', ''))
            out.append('<tr><td><a href="%s">%s</a></td><td>%s</td>'
                       '<td>%s</td><td>%s</td><td>%s</td></tr>' % (
                           _e(f['name']), _e(f['name']), _e(f['kind']),
                           _e(f.get('bytes', '-')), _e(what),
                           _e(f.get('scan'))))
        out.append('</table>')
    out.append('</section>')
    return '\n'.join(out)


def _missed(evidence):
    """The grab pipeline's counters and every missed frame counter with
    the gap it fell in (missed_frames.json, capture.fidelity_evidence).
    """
    if not evidence:
        return ''
    p = evidence.get('pipeline') or {}

    def ms(stage):
        return (p.get(stage) or {}).get('median_ms')
    out = ['<section id="missed-frames"><h2>Capture fidelity: missed '
           'frames</h2>',
           '<p class="meta">grabs %s (%s): unchanged, not judged %s; '
           'dropped unjudged %s; most waiting for the judge %s of %s. '
           'Median ms: grab %s, decode %s, QR %s, hash %s, judge %s.</p>'
           % tuple(_e(x) for x in (
               p.get('grabs'), p.get('format'), p.get('unchanged'),
               p.get('dropped'), p.get('max_queued'), p.get('max_pending'),
               ms('grab'), ms('decode'), ms('qr'), ms('hash'),
               ms('judge')))]
    count = evidence.get('refresh_count')
    missed = evidence.get('missed') or []
    if not count:
        out.append('<p>(no refresh_stats count: missed frames unknown)</p>')
    else:
        out.append('<p>%d of the %d frames the guest drew were never seen. '
                   'A gap shorter than one grab could not be caught.</p>' % (
                       max(0, count - (evidence.get('distinct') or 0)),
                       count))
    if missed:
        out.append('<table id="missed"><tr><th>frame</th><th>after (frame '
                   '@ s)</th><th>before (frame @ s)</th><th>gap ms</th>'
                   '<th>grab ms</th><th>between: undecodable / dropped / '
                   'unchanged</th><th>why</th></tr>')
        for r in missed:
            out.append('<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td>'
                       '<td>%s</td><td>%s / %s / %s</td><td>%s</td></tr>' %
                       tuple(_e(x) for x in (
                           r.get('frame'),
                           _frame_at(r.get('after_frame'),
                                     r.get('after_at_s')),
                           _frame_at(r.get('before_frame'),
                                     r.get('before_at_s')),
                           _dash(r.get('gap_ms')), _dash(r.get('grab_ms')),
                           r.get('undecodable_between'),
                           r.get('dropped_between'),
                           r.get('unchanged_between'), r.get('why'))))
        out.append('</table>')
    out.append('</section>')
    return '\n'.join(out)


def _section_head(sid, title, section):
    """A check's section opening: its title and its verdict's headline."""
    return ['<section id="%s"><h2>%s</h2>' % (sid, _e(title)),
            '<p class="%s">%s</p>' % (ROW_CLASS.get(section['verdict'], ''),
                                      _e(section['headline']))]


def _rows_table(tid, columns, rows, failed=lambda row: False):
    """A section's table: a header of `columns`, a row each, the ones
    `failed` says so marked; nothing without rows.
    """
    if not rows:
        return []
    return (['<table id="%s"><tr>%s</tr>' % (tid, ''.join(
        '<th>%s</th>' % _e(c) for c in columns))] +
        ['<tr%s>%s</tr>' % (' class="fail"' if failed(row) else '',
                            ''.join('<td>%s</td>' % _e(c) for c in row))
         for row in rows] + ['</table>'])


def _frame_states(results):
    """The per-frame check (scenario.frames): its counts and a row per
    frame that did not verify.
    """
    from kerbside_tempest_plugin.scenario import frames as frames_mod
    section = frames_mod.report_section(results)
    if section is None:
        return ''
    out = _section_head('frame-states', 'Frames on the wire', section)
    out += _rows_table('frame-rows', frames_mod.REPORT_COLUMNS,
                       section['rows'])
    out.append('</section>')
    return '\n'.join(out)


def _pacing_facts(live):
    """From liveness.json: how the paste was paced on qemu's PS/2 trace,
    and how much of the walk the console's path waited for a CPU.
    """
    facts = []
    for paste in (live or {}).get('paste_pacing') or ():
        chunks = paste.get('chunks') or []
        waits = [c.get('waited_s') or 0.0 for c in chunks]
        lost = [c['before'] for c in chunks
                if str(c.get('before', '')).startswith('lost')]
        facts.append(
            'paste of %d characters paced on the PS/2 trace: %d chunks of '
            'at most %s queue bytes, the longest wait for the guest to '
            'read the last %.3f s%s' % (
                paste.get('chars', 0), len(chunks), paste.get('window'),
                max(waits or [0.0]), '; ' + '; '.join(lost) if lost else ''))
    path = (live or {}).get('path')
    if path:
        facts.append(
            'the console\'s path waited for a CPU %d %% of the walk (%.1f '
            's of %.1f s available; most: %s); the key bound counts the '
            'available time' % (round(100 * path['share']),
                                path['available_s'], path['wall_s'],
                                path.get('who') or '?'))
    return facts


def _key_hops(data, live=None):
    """Where every key went (scenario.keyhops, keyhops.json): the
    headline, each lost key on its hop, the PS/2 queue's figures, the
    paste's pacing and the path's CPU (liveness.json) and a row per key.
    """
    from kerbside_tempest_plugin.scenario import keyhops as keyhops_mod
    section = keyhops_mod.report_section(data)
    if section is None:
        return ''
    out = _section_head('key-hops', 'Where the keys went', section)
    if section['lost']:
        out.append('<ul id="keys-lost">%s</ul>' % ''.join(
            '<li class="fail">%s</li>' % _e(line)
            for line in section['lost']))
    unseen = ['%s: %s' % (hop, how) for hop, how in
              section['observed'].items() if how != 'yes']
    queue = section['ps2_queue']
    facts = unseen + ([
        'PS/2 queue: at most %d of %d bytes held, %d byte(s) dropped, the '
        'slowest read %.3f s after its byte was queued' % (
            queue['max_depth'], queue['size'], queue['bytes_dropped'],
            queue['slowest_read_s'])] if queue else []) + _pacing_facts(live)
    if facts:
        out.append('<p class="meta">%s</p>' % _e('; '.join(facts)))
    # a row whose last column (the loss) is filled is a lost key
    out += _rows_table('key-rows', keyhops_mod.REPORT_COLUMNS,
                       section['rows'], failed=lambda row: row[-1])
    out.append('</section>')
    return '\n'.join(out)


def _dash(value):
    return '-' if value is None else value


def _frame_at(frame, at):
    return '-' if frame is None else '%s @ %.3f' % (frame, at or 0.0)


def build(path):
    """Render <path>/report.html from the files in `path`."""
    result = _load(path, 'result.json', {})
    rows = _load(path, 'timeline.json', [])
    frames = _load(path, 'frames.json', [])
    inputs = _load(path, 'report-inputs.json', {})
    summary = _load(path, 'ryll/evidence.json', None)
    beats = result.get('beats', [])
    verdict = 'PASS' if result.get('passed') else 'FAIL'
    name = result.get('name') or os.path.basename(path)
    files = sorted(
        os.path.relpath(os.path.join(d, f), path)
        for d, _, fs in os.walk(path) for f in fs
        if not os.path.relpath(os.path.join(d, f), path).startswith(
            'frames' + os.sep))
    drain_text = None
    try:
        with open(os.path.join(path, 'serial.log'),
                  errors='replace') as f:
            drain_text = f.read()
    except OSError:
        pass
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           '<title>%s: %s</title><style>%s</style></head><body>' % (
               _e(name), verdict, CSS),
           '<div class="verdict %s" id="verdict">Verdict: %s &mdash; %s'
           '</div>' % (verdict, verdict, _e(name)),
           _failures(result, beats, frames),
           '<div class="meta">%s; report written %s</div>' % (
               '; '.join('%s: <code>%s</code>' % (_e(k), _e(v)) for k, v in
                         (inputs.get('meta') or {}).items()),
               time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())),
           '<h2>Checks</h2>', _check_rows(result.get('results', [])),
           _missed(_load(path, 'missed_frames.json', None)),
           _frame_states(result.get('results', [])),
           _key_hops(_load(path, 'keyhops.json', None),
                     _load(path, 'liveness.json', None)),
           '<h2>Timeline</h2><p class="meta">Seconds since the capture '
           'started. Drain events sit at the first digest whose channel '
           'hashes prove them. Hover a mark for its text.</p>',
           timeline_svg(rows, beats),
           _beats(beats), _player(frames, (summary or {}).get('video')),
           _evidence(summary)]
    phases = inputs.get('phases') or result.get('phases') or {}
    if phases:
        out.append('<h2>Phase times</h2><table id="phases">%s</table>' %
                   ''.join('<tr><td>%s</td><td>%s</td></tr>' % (
                       _e(k), '-' if v is None else '%.2f s' % v)
                       for k, v in phases.items()))
    out.append('<h2>Files</h2><ul id="files">%s</ul>' % ''.join(
        '<li><a href="%s">%s</a></li>' % (_e(f), _e(f)) for f in files))
    if drain_text:
        out.append('<h2>Serial log</h2><pre id="serial">%s</pre>'
                   % _e(drain_text))
    out.append('</body></html>\n')
    target = os.path.join(path, 'report.html')
    with open(target, 'w') as f:
        f.write('\n'.join(x for x in out if x))
    return target


# --------------------------------------------------------------- index


def find_reports(root):
    """report.html files under `root` (lane workdirs skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in ('lanes', 'frames', 'ryll',
                                          'secrets'))
        if 'report.html' in filenames:
            found.append(os.path.join(dirpath, 'report.html'))
    return found


def write_index(root):
    """<root>/index.html linking every test's report under `root`."""
    rows = []
    for report in find_reports(root):
        d = os.path.dirname(report)
        r = _load(d, 'result.json', {})
        failed = [c['name'] for c in r.get('results', [])
                  if _verdict(c) == 'FAIL']
        not_run = sum(1 for c in r.get('results', [])
                      if _verdict(c) == 'NOT RUN')
        if not_run:
            failed.append('(%d not run)' % not_run)
        rows.append((r.get('passed', False), os.path.relpath(report, root),
                     r.get('name') or os.path.basename(d), r.get('walk'),
                     r.get('route'), failed, r.get('error')))
    passed = sum(1 for x in rows if x[0])
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           '<title>Sextant runs: %d passed, %d failed</title><style>%s'
           '</style></head><body>' % (passed, len(rows) - passed, CSS),
           '<div class="verdict %s" id="verdict">%d of %d passed</div>' % (
               'PASS' if rows and passed == len(rows) else 'FAIL', passed,
               len(rows)),
           '<table id="runs"><tr><th>verdict</th><th>test</th><th>walk'
           '</th><th>route</th><th>failed checks / error</th></tr>']
    for ok, rel, name, walk, route, failed, error in rows:
        out.append('<tr class="%s"><td>%s</td><td><a href="%s">%s</a></td>'
                   '<td>%s</td><td>%s</td><td>%s</td></tr>' % (
                       'pass' if ok else 'fail', 'PASS' if ok else 'FAIL',
                       _e(rel), _e(name), _e(walk), _e(route),
                       _e(', '.join(failed) + (
                           ('; ' if failed else '') + error[:200]
                           if error else ''))))
    out.append('</table></body></html>\n')
    target = os.path.join(root, 'index.html')
    with open(target, 'w') as f:
        f.write('\n'.join(out))
    return target


def main(argv=None):
    p = argparse.ArgumentParser(description='Rebuild report.html pages '
                                'and the index of a job run.')
    sub = p.add_subparsers(dest='cmd', required=True)
    b = sub.add_parser('build', help='rebuild one test\'s report.html')
    b.add_argument('dir')
    i = sub.add_parser('index', help='write DIR/index.html over every '
                       'report.html under DIR')
    i.add_argument('dir')
    args = p.parse_args(argv)
    if args.cmd == 'build':
        print(build(args.dir))
    else:
        print(write_index(args.dir))
    return 0


if __name__ == '__main__':
    sys.exit(main())
