"""Starting ryll on a guest's console: shared by `lane.Lane` (the local
direct-qemu lane) and `provider_lane.ProviderLane` (the clouds).
"""

import logging
import os

from kerbside_tempest_plugin.common import vv as common_vv

LOG = logging.getLogger(__name__)


def start_ryll_on(guest, route, ryll_dir, binary, redactor, extra_args=()):
    """Start ryll headless on a fresh .vv from `guest` for `route`.

    The .vv is fetched here, right before the start: a Kerbside console
    token lives one minute and covers every channel's link. Its password
    goes to `redactor`; only a redacted copy is kept in `ryll_dir`.
    RyllProcess writes the real one 0600 into its private 0700 directory,
    and ryll deletes it after reading (delete-this-file=1). Returns the
    started RyllProcess; the caller waits for its socket.
    """
    from kerbside_tempest_plugin.ryll import process as ryll_process
    os.makedirs(ryll_dir, exist_ok=True)
    text = guest.console_vv(route)
    redactor.add(common_vv.parse_vv(text).get('password'))
    with open(os.path.join(ryll_dir, 'console.redacted.vv'), 'w') as f:
        f.write(common_vv.redact_vv(text))
    rp = ryll_process.RyllProcess(workdir=ryll_dir, binary=binary,
                                  vv_text=text, extra_args=extra_args)
    rp.start()
    return rp


def stop_ryll_quietly(rp):
    """Stop a RyllProcess (or None); log, never raise."""
    if rp is None:
        return
    try:
        rp.stop()
    except Exception:
        LOG.exception('stopping ryll failed')
