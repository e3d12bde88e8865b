"""The tempest plugin shim and its configuration options."""

import os

from oslo_config import cfg

from kerbside_tempest_plugin import config
from kerbside_tempest_plugin import plugin
from kerbside_tempest_plugin.sextant import contract


def _conf():
    conf = cfg.ConfigOpts()
    conf.register_group(cfg.OptGroup('service_available'))
    config.register_opts(conf)
    conf([], project='test')
    return conf


def test_load_tests_points_at_the_scenario_tree_not_the_unit_tests():
    test_dir, top = plugin.KerbsideTempestPlugin().load_tests()
    assert test_dir.endswith(os.path.join('kerbside_tempest_plugin', 'tests'))
    assert os.path.isdir(os.path.join(test_dir, 'scenario'))
    assert os.path.isfile(os.path.join(top, 'setup.cfg'))
    assert not os.path.commonpath([test_dir]).endswith('unit_tests')


def test_every_registered_group_is_listed_for_aliases_and_the_sample():
    conf = _conf()
    listed = {name for name, _ in plugin.KerbsideTempestPlugin()
              .get_opt_lists()}
    for group, opts in config.list_opts():
        name = getattr(group, 'name', group)
        assert name in listed
        for opt in opts:
            # Every option is readable with its default.
            getattr(getattr(conf, name), opt.dest)


def test_service_flag_defaults_to_off_so_scenarios_skip_unconfigured():
    assert _conf().service_available.kerbside is False


def test_paste_delay_default_is_the_contract_constant():
    assert (_conf().sextant.paste_char_delay_ms
            == contract.PASTE_CHAR_DELAY_MS)


def test_paste_secret_default_is_the_contract_secret():
    assert _conf().sextant.paste_secret == contract.PASTE_SECRET
