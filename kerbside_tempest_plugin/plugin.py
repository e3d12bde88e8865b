"""The tempest plugin entry point."""

import os

from tempest.test_discover import plugins

from kerbside_tempest_plugin import config as project_config


class KerbsideTempestPlugin(plugins.TempestPlugin):

    def load_tests(self):
        base_path = os.path.split(os.path.dirname(
            os.path.abspath(__file__)))[0]
        test_dir = 'kerbside_tempest_plugin/tests'
        full_test_dir = os.path.join(base_path, test_dir)
        return full_test_dir, base_path

    def register_opts(self, conf):
        project_config.register_opts(conf)

    def get_opt_lists(self):
        return project_config.get_opt_lists()

    def get_service_clients(self):
        return []
