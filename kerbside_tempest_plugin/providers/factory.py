"""The configured guest provider, from oslo.config.

    provider = factory.provider_from_config(CONF, **kw)

`[kerbside] provider` picks the class; `kw` carries what configuration
cannot: for `nova` the test's tempest clients (`servers_client`,
optionally `admin_servers_client` and an image v2 `images_client`), for
`direct_qemu` the lane's wiring (`registry`, `secrets`, `run_dir`,
...), for `shakenfist` optionally a ready `client`. Any keyword overrides
the configured value. Provider modules are imported only when chosen, so a
missing optional dependency never breaks the others (or tempest
discovery).
"""

from kerbside_tempest_plugin.common import errors

PROVIDERS = ('direct_qemu', 'nova', 'shakenfist')


def provider_from_config(conf, **kw):
    """The GuestProvider named by `conf.kerbside.provider`."""
    name = kw.pop('provider', None) or conf.kerbside.provider
    if name == 'direct_qemu':
        from kerbside_tempest_plugin.providers import direct_qemu
        return direct_qemu.DirectQemuProvider.from_config(conf, **kw)
    if name == 'nova':
        if kw.get('servers_client') is None:
            raise errors.ProviderError(
                'the nova provider needs the test\'s tempest ServersClient: '
                'provider_from_config(CONF, servers_client=..., '
                'admin_servers_client=...); without a tempest test, build '
                'it from Keystone credentials with nova.NovaProvider.'
                'from_credentials(auth_url, username, password, project)')
        from kerbside_tempest_plugin.providers import nova
        return nova.NovaProvider.from_config(conf, **kw)
    if name == 'shakenfist':
        from kerbside_tempest_plugin.providers import shakenfist
        return shakenfist.ShakenFistProvider.from_config(conf, **kw)
    raise errors.ProviderError('unknown provider %r (known: %s)' % (
        name, ', '.join(PROVIDERS)))
