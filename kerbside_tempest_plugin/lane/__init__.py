"""Local services for the direct-qemu lane.

`Lane` (in lane.lane) is imported lazily so that the small helper modules
here (ports, procs, secrets, vv, tls) can be used by the direct-qemu
provider without importing the whole lane.
"""


def __getattr__(name):
    if name in ('Lane', 'teardown_workdir', 'lane_status'):
        from kerbside_tempest_plugin.lane import lane
        return getattr(lane, name)
    raise AttributeError(name)
