"""A live console on one lane, for a person or an agent.

- `console.session`: `Session`, the verbs (key, type, paste, shot, digest,
  watch, wait, serial, drain, status, walk, boot) over one lane, owned
  (started here, torn down on close) or attached (a `kerbside-harness up`
  workdir); every result is a JSON-able dict, every failure a
  `ConsoleError` with a readable message and no secret.
- `console.verbs`: the command-line form of the verbs (parsing, help),
  shared by the interactive shell and the script runner.
- `console.shell`: `kerbside-harness console`, interactive or from a
  script (one JSON line per result, non-zero exit on the first error).
- `console.mcp_server`: `kerbside-harness mcp`, the same verbs as MCP tools
  over stdio (needs the `mcp` extra; imported only there).

The guest is driven through the scenario's own layer: the beats of
scenario.walk, the capture of scenario.capture, key names of sextant.keys
and the lane.base.Lane interface. Nothing here imports tempest.
"""
