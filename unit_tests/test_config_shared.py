"""The cloud-provider options built once, one name per concept, and
tempest's [compute] options honoured where they mean the same thing."""

from oslo_config import cfg

from kerbside_tempest_plugin import config
from kerbside_tempest_plugin.providers import nova
from kerbside_tempest_plugin.providers import shakenfist


def _conf(tmp_path, text, with_compute=True):
    path = tmp_path / 'tempest.conf'
    path.write_text(text)
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    if with_compute:   # what tempest registers
        conf.register_opts([cfg.IntOpt('build_timeout', default=300),
                            cfg.StrOpt('flavor_ref', default='1')],
                           group='compute')
    conf(['--config-file', str(path)], project='ktp-test')
    return conf


def test_both_cloud_groups_share_the_same_options():
    names = [{o.name for o in opts} for opts in (
        config.NovaProviderGroup, config.ShakenFistProviderGroup)]
    shared = {o.name for o in config.cloud_provider_opts('x', 'y', 1, '')}
    assert shared <= names[0] and shared <= names[1]
    assert 'serial_poll_interval' in names[0] & names[1]
    assert 'boot_timeout' not in names[0] | names[1]


def test_tempest_compute_options_fill_what_is_unset(tmp_path):
    conf = _conf(tmp_path, '[compute]\nbuild_timeout = 77\n'
                           'flavor_ref = small\n')
    p = nova.NovaProvider.from_config(conf, servers_client=object())
    assert (p.boot_timeout, p.flavor_ref) == (77, 'small')
    sf = shakenfist.ShakenFistProvider.from_config(conf, client=object())
    assert sf.boot_timeout == 77


def test_own_options_win_and_old_names_still_read(tmp_path):
    conf = _conf(tmp_path, '[compute]\nbuild_timeout = 77\n'
                           '[nova_provider]\nboot_timeout = 12\n'
                           'flavor_ref = big\n'
                           '[shakenfist_provider]\nbuild_timeout = 13\n'
                           'console_poll_interval = 0.5\n')
    p = nova.NovaProvider.from_config(conf, servers_client=object())
    assert (p.boot_timeout, p.flavor_ref) == (12, 'big')
    sf = shakenfist.ShakenFistProvider.from_config(conf, client=object())
    assert (sf.boot_timeout, sf.serial_interval) == (13, 0.5)


def test_without_tempest_the_build_timeout_is_tempests_default(tmp_path):
    conf = _conf(tmp_path, '', with_compute=False)
    p = nova.NovaProvider.from_config(conf, servers_client=object())
    assert p.boot_timeout == config.DEFAULT_BUILD_TIMEOUT
    assert p.flavor_ref is None
