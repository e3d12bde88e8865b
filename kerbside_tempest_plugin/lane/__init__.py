"""The services in front of the guest: the direct-qemu lane (MariaDB,
Kerbside, TLS, the process registry) and the provider lane.

The small helpers the providers also need (ports, secrets, .vv, TLS) live
in `kerbside_tempest_plugin.common`, below both.
"""
