"""How `tempest run --concurrency N` spreads the Sextant scenario tests.

stestr (under `tempest run`) keeps the tests of one group on one worker,
and the group_regex tempest writes into every workspace's .stestr.conf
groups by class. Each class brings up its own lane, so the layout decides
how many lanes run at once: two classes of two tests give each of two
workers one lane and two walks. This asks stestr's own scheduler, with
tempest's own group_regex, where the real test ids go.
"""

import configparser
import re
import unittest

from stestr import scheduler
from tempest.cmd import init as tempest_init

from kerbside_tempest_plugin.tests.scenario import test_sextant_scenario

MODULE = test_sextant_scenario.__name__


def _test_ids():
    suite = unittest.TestLoader().loadTestsFromModule(test_sextant_scenario)

    def walk(s):
        for t in s:
            if isinstance(t, unittest.TestSuite):
                yield from walk(t)
            else:
                yield t.id()
    return sorted(walk(suite))


def _tempest_group_callback():
    conf = configparser.ConfigParser()
    conf.read_string(tempest_init.STESTR_CONF % ('unused', 'unused'))
    regex = re.compile(conf.get('DEFAULT', 'group_regex'))

    def group(test_id):   # as stestr.config_file builds it
        m = regex.match(test_id)
        return m.group(0) if m else None
    return group


def _class_of(test_id):
    return test_id[len(MODULE) + 1:].split('.')[0]


def test_four_walks_in_two_classes_of_two():
    ids = _test_ids()
    assert len(ids) == 4, ids
    classes = {}
    for i in ids:
        classes.setdefault(_class_of(i), []).append(i)
    assert sorted(classes) == ['SextantScenarioTest',
                               'SextantScenarioVariantsTest']
    assert all(len(v) == 2 for v in classes.values())
    # The base holds the lane machinery and no test of its own.
    assert not [i for i in ids if 'SextantScenarioBase' in i]


def test_two_workers_get_one_class_each():
    ids = _test_ids()
    parts = scheduler.partition_tests(ids, 2, None,
                                      _tempest_group_callback())
    assert sorted(len(p) for p in parts) == [2, 2]
    assert [len({_class_of(i) for i in p}) for p in parts] == [1, 1]
    assert {_class_of(p[0]) for p in parts} == {
        'SextantScenarioTest', 'SextantScenarioVariantsTest'}


def test_more_workers_than_classes_leaves_the_rest_idle():
    # A class never splits: at 4 workers two of them get nothing (so two
    # lanes per route at most, whatever the concurrency).
    parts = scheduler.partition_tests(_test_ids(), 4, None,
                                      _tempest_group_callback())
    assert sorted(len(p) for p in parts) == [0, 0, 2, 2]
