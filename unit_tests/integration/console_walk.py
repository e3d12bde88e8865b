"""The canonical walk as a `kerbside-harness console` script, shared by the
console's live tests on the direct-qemu lane and on the OpenStack lane.
"""

from kerbside_tempest_plugin.sextant import contract


def walk_script(parked_timeout, save=None, drain_timeout=None):
    """The walk from Awaiting to Parked, a digest there (saved to `save`
    when given), the power-off key and the drain, then `status`: one verb
    a line, as a user would type them.
    """
    return [
        'digest',
        'key enter',
        'wait line_rendered row=21',
        'key i',
        'wait line_rendered row=25',
        'paste %s' % contract.PASTE_SECRET,
        'key enter',
        'wait paste_received correct=true --unless "paste_received '
        'correct=false"',
        'wait scene_transition to=parked --timeout %d' % parked_timeout,
        'digest --save %s' % save if save else 'digest',
        'key enter',
        'drain --timeout %d' % drain_timeout if drain_timeout else 'drain',
        'status',
    ]
