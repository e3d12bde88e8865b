"""`kerbside-harness mcp` driven by the mcp SDK's own client over stdio,
against a real lane: list the tools, walk the guest from Awaiting to
Parked with tool calls only, check the drain, and see the lane torn down
when the client disconnects.
"""

import base64
import json
import os
import sys
import time

import pytest

from kerbside_tempest_plugin.lane import lane
from kerbside_tempest_plugin.lane import procs
from kerbside_tempest_plugin.sextant import contract
from unit_tests.conftest import REPO_ROOT
from unit_tests.conftest import require_tools

pytestmark = pytest.mark.integration

mcp = pytest.importorskip('mcp', reason='the mcp extra is not installed')

TOOLS = {'boot_lane', 'attach_lane', 'send_keys', 'type_text', 'paste',
         'screenshot', 'digest', 'wait_for', 'read_serial', 'drain',
         'status', 'walk', 'teardown'}


def _structured(result):
    assert not result.is_error, [getattr(c, 'text', c)
                                 for c in result.content]
    if result.structured_content is not None:
        out = result.structured_content
        return out.get('result', out) if set(out) == {'result'} else out
    return json.loads(result.content[0].text)


async def _walk(session, workdir, timings):
    listed = await session.list_tools()
    names = {t.name for t in listed.tools}
    assert TOOLS <= names, TOOLS - names
    keys_tool = [t for t in listed.tools if t.name == 'send_keys'][0]
    assert keys_tool.input_schema['properties']['keys']['type'] == 'array'

    # A tool before any lane: a readable error, not a crash.
    early = await session.call_tool('digest', {})
    assert early.is_error and 'boot_lane' in early.content[0].text

    t = time.monotonic()
    booted = _structured(await session.call_tool('boot_lane', {
        'route': 'kerbside', 'workdir': workdir}))
    timings['boot_lane'] = time.monotonic() - t
    assert booted['route'] == 'kerbside'

    async def call(name, **args):
        t = time.monotonic()
        out = _structured(await session.call_tool(name, args))
        timings.setdefault(name, []).append(time.monotonic() - t)
        return out

    d = await call('digest')
    assert d['scene'] == 'awaiting', d
    shot = await session.call_tool('screenshot', {})
    assert not shot.is_error
    image = [c for c in shot.content if c.type == 'image'][0]
    assert image.mime_type == 'image/png'
    assert base64.b64decode(image.data)[:8] == b'\x89PNG\r\n\x1a\n'

    await call('send_keys', keys=['enter'])
    await call('wait_for', kind='line_rendered', fields={'row': 21})
    await call('send_keys', keys=['i'])
    await call('wait_for', kind='line_rendered', fields={'row': 25})
    pasted = await call('paste', text=contract.PASTE_SECRET)
    assert pasted['chars_sent'] == len(contract.PASTE_SECRET)
    await call('send_keys', keys=['enter'])
    got = await call('wait_for', kind='paste_received')
    assert any(e.get('correct') for e in got['events']
               if e['kind'] == 'paste_received'), got
    parked = await call('wait_for', kind='scene_transition',
                        fields={'to': 'parked'}, timeout=60,
                        unless_kind='paste_received',
                        unless_fields={'correct': False})
    assert parked['framebuffer_hash'].startswith('0x')
    d = await call('digest')
    assert d['scene'] == 'parked', d
    await call('send_keys', keys=['enter'])
    drained = await call('drain', walk='canonical')
    assert drained['passed'], drained['checks']
    assert drained['complete'] and drained['records'] > 20
    assert drained['powered_off'] is True
    serial = await call('read_serial')
    assert contract.BANNER in serial['text']
    assert 'type=refresh_stats' in serial['text']
    st = await call('status')
    assert st['guest']['running'] is False
    text = json.dumps([d, drained, serial, st])
    return text


def test_mcp_walk_over_stdio(tmp_path):
    require_tools('qemu-system-x86_64', 'qemu-img', 'openssl', 'ryll',
                  'mariadb-install-db')
    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.stdio import stdio_client
    from mcp.client.stdio import StdioServerParameters

    workdir = str(tmp_path / 'lane')
    params = StdioServerParameters(
        command=sys.executable,
        args=['-m', 'kerbside_tempest_plugin.cmd.harness', 'mcp'],
        cwd=str(REPO_ROOT))
    timings = {}
    errlog = open(str(tmp_path / 'server.stderr'), 'w')

    async def main():
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await _walk(session, workdir, timings)
    try:
        text = anyio.run(main)
    finally:
        errlog.close()
        # The client has gone: the lane must go down (a detached
        # `kerbside-harness down`, which may still be running).
        # The processes stop first; the state file says 'down' only once
        # the ports are checked and the artifacts scrubbed, so wait for
        # both.
        registry = os.path.join(workdir, 'processes.json')
        deadline = time.monotonic() + 60
        living = state = None
        while time.monotonic() < deadline:
            reg = procs.ProcessRegistry(registry)
            living = [r['name'] for r in reg.living()]
            state = lane.load_state(workdir) or {}
            if not living and state.get('state') == 'down':
                break
            time.sleep(0.5)
        assert living == [], 'left running after disconnect: %s' % living
    assert state['state'] == 'down', (
        'lane state 60 s after the client left: %s' % state.get('state'))
    assert state['teardown']['busy_ports'] == []
    # No secret of the lane in anything a tool returned.
    secrets_dir = os.path.join(workdir, 'secrets')
    for name in os.listdir(secrets_dir) if os.path.isdir(secrets_dir) \
            else ():
        path = os.path.join(secrets_dir, name)
        if os.path.isfile(path) and os.path.getsize(path) < 512:
            with open(path) as f:
                value = f.read().strip()
            if len(value) >= 8:
                assert value not in text, name
    print('mcp tool round trips (s): %s' % json.dumps(
        {k: (round(v, 2) if isinstance(v, float) else
             [round(x, 2) for x in v]) for k, v in timings.items()},
        sort_keys=True))
