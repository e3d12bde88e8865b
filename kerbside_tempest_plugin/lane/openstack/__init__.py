"""A real single-box OpenStack for the lane, brought up from PyPI and apt.

Every service is a plain process the lane starts itself (no systemd, no
devstack), on loopback ports allocated per lane, with its state, logs,
config and sockets under the lane's work directory, and recorded in the
lane's process registry so that `down` stops everything, also after a
crash:

- venv: the OpenStack venv (nova, keystone, placement, glance, neutron,
  libvirt-python, gunicorn), never the project's or tempest's;
- config: the ini files, rendered from one `Layout` (pure functions);
- services: MariaDB (one database per service), epmd + RabbitMQ,
  memcached, libvirtd + virtlogd (in a private mount namespace), the
  WSGI APIs under gunicorn and the Nova daemons;
- keystone: keystone-manage bootstrap, service users and the catalog;
- api: a small Keystone-authenticated REST client (typed errors, no
  secret in messages);
- compute: cells v2, the flavor, the Sextant image in Glance, servers,
  console output and spice-direct consoles;
- cloud: `OpenStackCloud`, which puts it together (up, status, down).
"""
