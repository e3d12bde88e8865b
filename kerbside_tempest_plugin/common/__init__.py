"""The bottom layer: what the providers, the lane, ryll and the scenario
all need and none of them owns.

- `errors`: the one error tree (HarnessError at the root);
- `waiting.wait_until`: the deadline helper every poll goes through;
- `logtext`: the one ANSI regex and the one tail function for messages;
- `ports`, `secrets` (SecretStore, Redactor, scrub_tree), `vv`, `tls`;
- `atomic`: the one tmp-file-then-rename writer.

Modules here import the standard library only (and each other); nothing
in this package imports from the rest of kerbside_tempest_plugin.
"""
