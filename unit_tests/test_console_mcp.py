"""console.mcp_server in process (the SDK's own Client over its in-memory
transport), attached to a workdir whose ryll is ryll.fake.FakeRyll: the
tools and their typed schemas, structured results, the screenshot as an
image item, readable errors, and no secret in any result.
"""

import base64
import json
import os
import subprocess
import sys

import pytest

from kerbside_tempest_plugin.common import atomic
from kerbside_tempest_plugin.common import secrets
from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.digest import render
from kerbside_tempest_plugin.ryll import fake as fake_ryll
from unit_tests import scenario_fakes

mcp = pytest.importorskip('mcp', reason='the mcp extra is not installed')

SECRET = 'spice-ticket-s3cret'


@pytest.fixture
def workdir(tmp_path):
    fake = fake_ryll.FakeRyll().start()
    fake.png = scenario_fakes.png_bytes(render.render_guest_frame(
        4, {}, [ev.Keypress(10, 13, 0)]))
    w = str(tmp_path / 'lane')
    os.makedirs(w)
    secrets.SecretStore(os.path.join(w, 'secrets'),
                        secrets.Redactor()).put('spice-ticket', SECRET)
    serial = os.path.join(w, 'serial.log')
    with open(serial, 'w') as f:
        f.write('Hello from Uncalibrated Sextant\nticket %s\n' % SECRET)
    atomic.write_json(os.path.join(w, 'lane.json'), {
        'state': 'up', 'route': 'direct', 'control_socket': fake.path,
        'serial_log': serial, 'guest': {'name': 'g'}})
    atomic.write_json(os.path.join(w, 'processes.json'), [])
    try:
        yield w, fake
    finally:
        fake.stop()


def _run(coro_fn):
    import anyio
    return anyio.run(coro_fn)


def test_tools_typed_results_and_no_secrets(workdir):
    from mcp import Client

    from kerbside_tempest_plugin.console import mcp_server
    w, fake = workdir
    server, holder = mcp_server.build_server()
    seen = []

    async def main():
        async with Client(server) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert tools['send_keys'].input_schema['properties']['keys'][
                'items']['type'] == 'string'
            assert 'fields' in tools['wait_for'].input_schema['properties']
            early = await c.call_tool('send_keys', {'keys': ['enter']})
            assert early.is_error
            assert 'boot_lane' in early.content[0].text
            att = await c.call_tool('attach_lane', {'workdir': w,
                                                    'own': False})
            assert not att.is_error, att.content
            seen.append(att.structured_content)
            keys = await c.call_tool('send_keys', {'keys': ['ctrl+c', 'i']})
            assert keys.structured_content == {'keys': ['ctrl+c', 'i']}
            bad = await c.call_tool('send_keys', {'keys': ['nokey']})
            assert bad.is_error and 'unknown key name' in \
                bad.content[0].text
            d = await c.call_tool('digest', {})
            assert d.structured_content['frame_counter'] == 4
            assert d.structured_content['scene'] == 'awaiting'
            shot = await c.call_tool('screenshot', {})
            img = [x for x in shot.content if x.type == 'image'][0]
            assert base64.b64decode(img.data) == fake.png
            serial = await c.call_tool('read_serial', {})
            seen.append(serial.structured_content)
            assert 'Hello from' in serial.structured_content['text']
            # The closed connection reads as ryll gone, as a tool error.
            fake.active.close()
            gone = await c.call_tool('send_keys', {'keys': ['enter']})
            assert gone.is_error
            seen.append(gone.content[0].text)
            down = await c.call_tool('teardown', {})
            assert down.structured_content['torn_down'] is False
    _run(main)
    assert SECRET not in json.dumps(seen)
    sent = [r['params']['scancode'] for r in fake.requests_for('send_key')]
    assert sent[:2] == [0x1D, 0x2E]          # ctrl down, c down


def test_mcp_is_imported_lazily():
    """Nothing but `kerbside-harness mcp` imports the mcp package."""
    code = ('import sys; import kerbside_tempest_plugin.cmd.harness as h; '
            'import kerbside_tempest_plugin.console.shell; '
            'import kerbside_tempest_plugin.console.mcp_server; '
            'import kerbside_tempest_plugin.plugin; '
            'h.build_parser().parse_args(["console", "--attach", "x"]); '
            'print(sorted(m for m in sys.modules if m == "mcp" or '
            'm.startswith("mcp.")))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'


def test_disconnect_during_a_tool_still_tears_down(workdir):
    """stdio: the client leaves while wait_for is still waiting; the
    server's teardown (a detached `kerbside-harness down`, since the
    session owns the lane) runs anyway.
    """
    import time

    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.stdio import stdio_client
    from mcp.client.stdio import StdioServerParameters

    from unit_tests.conftest import REPO_ROOT
    w, fake = workdir
    params = StdioServerParameters(
        command=sys.executable,
        args=['-m', 'kerbside_tempest_plugin.cmd.harness', 'mcp'],
        cwd=str(REPO_ROOT))

    async def main():
        with open(os.devnull, 'w') as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    att = await session.call_tool(
                        'attach_lane', {'workdir': w, 'own': True})
                    assert not att.is_error, att.content
                    with anyio.move_on_after(1.5):
                        await session.call_tool('wait_for', {
                            'kind': 'scene_transition',
                            'fields': {'to': 'parked'}, 'timeout': 120})
                        raise AssertionError('wait_for returned')
    t = time.monotonic()
    _run(main)
    assert time.monotonic() - t < 30
    deadline = time.monotonic() + 30
    state = None
    while time.monotonic() < deadline:
        with open(os.path.join(w, 'lane.json')) as f:
            state = json.load(f).get('state')
        if state == 'down':
            break
        time.sleep(0.2)
    assert state == 'down'
    assert os.path.exists(os.path.join(w, 'console', 'teardown.log'))


def test_a_killed_console_still_tears_its_lane_down(workdir):
    """SIGKILL skips every finally; the guardian does the teardown."""
    import signal
    import time

    from unit_tests.conftest import REPO_ROOT
    w, fake = workdir
    proc = subprocess.Popen(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.harness',
         'console', '--attach', w, '--down-on-exit'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, cwd=str(REPO_ROOT), text=True)
    try:
        proc.stdin.write('status\n')
        proc.stdin.flush()
        assert '"verb": "lane"' in proc.stdout.readline()
        assert '"verb": "status"' in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(os.path.join(w, 'lane.json')) as f:
            if json.load(f).get('state') == 'down':
                break
        time.sleep(0.2)
    with open(os.path.join(w, 'lane.json')) as f:
        assert json.load(f).get('state') == 'down'
