"""The keypress-to-screen latency loadtest (issue 5).

Library side of ``kerbside-latency`` (``kerbside_tempest_plugin.cmd.latency``):

- ``stats``: nearest-rank percentiles and per-route summaries;
- ``sampler``: one route's measuring session over a ryll control client,
  and the loop that alternates routes sample by sample;
- ``fake``: an instant-answer fake of ryll's control socket, used to
  measure the floor (what the client itself costs) and by the unit tests;
- ``report``: the per-sample CSV, the JSON summary, the PNG plot and the
  stdout summary;
- ``lane``: bringing the latency guest up on the ``kerbside`` and
  ``direct`` routes with a ryll on each, and tearing it all down.

Only ``lane`` needs qemu, Kerbside and ryll; ``report`` imports matplotlib
lazily; the rest is standard library.
"""
