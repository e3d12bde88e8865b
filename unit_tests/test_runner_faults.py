"""The runner's lines about faults injected and key responsiveness."""

import types

from kerbside_tempest_plugin.scenario import runner


def test_fault_summary_names_the_first_injection():
    events = [{'event': 'link'}, {
        'event': 'inject', 'action': 'drop', 'channel': 'display',
        'direction': 's2c', 'name': 'draw_copy', 't_rel': 5.25,
        'rect': [1, 2, 3, 4]}, {'event': 'inject', 'action': 'drop'}]
    line = runner.fault_summary(events)
    assert line.startswith('2: first drop on display s2c draw_copy at '
                           '5.25 s') and 'rect [1, 2, 3, 4]' in line
    assert runner.fault_summary([{'event': 'link'}]).startswith('none')


def test_fault_log_of_a_lane_without_relay_is_none():
    assert runner._fault_log(types.SimpleNamespace(), 0) is None

    def broken(since=None):
        raise OSError('gone')
    lane = types.SimpleNamespace(relays=[1], fault_log=broken)
    assert runner._fault_log(lane, 0)[0]['event'] == 'unreadable'


def test_key_response_line():
    ev = {'bound_s': 6.0, 'per_beat': {'booting': {
        'n': 1, 'median_s': 0.05, 'max_s': 0.05}}}
    assert runner.key_response_line(ev) == \
        'booting 1 key(s) median 0.05 max 0.05 (bound 6.0 s)'
    assert runner.key_response_line({'bound_s': 6.0, 'per_beat': {}}) == \
        'no key registered (bound 6.0 s)'
