"""Kerbside's side of the Nova flow against the real single-box cloud:
what a user sees from `GET /nova-console.vv?token=` when the token is
good, used twice, absent, unknown, expired, or belongs to a server that
was deleted. Status and message asserted as Kerbside 0.8.0 answers them
(its error body is {"error": <message>, "status": <code>}).

One cloud (with Kerbside in front) and one Sextant server for the module;
the deleted-server case boots and deletes a second one. Needs what
test_openstack_lane.py needs. Takes a few minutes.
"""

import json
import os
import time
import urllib.error
import urllib.request

import pytest
from tempest.lib.common.utils import data_utils

from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin import guest_images
from kerbside_tempest_plugin.lane.openstack import compute
from kerbside_tempest_plugin.lane.openstack import config
from kerbside_tempest_plugin.sextant import contract

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.openstack]


@pytest.fixture(scope='module')
def cloud(openstack_cloud):
    """The session's cloud with one Sextant server for this module."""
    c = openstack_cloud
    c.image_path = guest_images.sextant_image(None)
    c.server = c.boot(c.image_path, banner=contract.BANNER)['id']
    try:
        yield c
    finally:
        c.delete(c.server, timeout=180)


def _get(url):
    """(status, body text) of a plain GET; never raises on HTTP errors."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _error(body):
    return json.loads(body)


def _kerbside_url(cloud, token=None):
    base = cloud.kerbside.api_url + '/nova-console.vv'
    return base if token is None else '%s?token=%s' % (base, token)


def test_a_token_gives_a_proxy_vv_and_may_be_used_again(cloud):
    remote = compute.spice_direct(cloud.admin, cloud.server)
    assert remote['url'].startswith(_kerbside_url(cloud) + '?token=')
    cloud.redactor.add(compute.token_of(remote['url']))
    status, first = _get(remote['url'])
    assert status == 200, first
    vv = common_vv.parse_vv(first)
    # The proxy, not the hypervisor: Kerbside's ports and CA.
    assert int(vv['port']) == cloud.layout.ports['kerbside_insecure']
    assert int(vv['tls-port']) == cloud.layout.ports['kerbside_secure']
    assert vv['password'] and 'BEGIN CERTIFICATE' in vv['ca']
    assert cloud.server in vv['title']
    # Nova's token is not single-use: within its TTL Kerbside redeems it
    # again, each time with a new proxy token (a new session).
    status, second = _get(remote['url'])
    assert status == 200, second
    assert common_vv.parse_vv(second)['password'] != vv['password']
    # Kerbside's access log names the route, never the token in its query
    # string (lane.kerbside.ACCESS_LOG_FORMAT), even while the cloud runs.
    with open(os.path.join(cloud.kerbside.log_dir,
                           'gunicorn-access.log')) as f:
        access = f.read()
    assert '"GET /nova-console.vv HTTP/1.1" 200' in access, access[-1000:]
    assert compute.token_of(remote['url']) not in access


def test_no_token_is_401(cloud):
    status, body = _get(_kerbside_url(cloud))
    assert status == 401
    assert _error(body) == {'error': 'token absent', 'status': 401}


def test_an_unknown_token_is_404(cloud):
    status, body = _get(_kerbside_url(cloud, data_utils.rand_uuid()))
    assert status == 404
    assert _error(body) == {'error': 'nova token not found', 'status': 404}


def test_an_expired_token_is_404(cloud):
    remote = compute.spice_direct(cloud.admin, cloud.server)
    cloud.redactor.add(compute.token_of(remote['url']))
    time.sleep(config.CONSOLE_TOKEN_TTL + 2)
    status, body = _get(remote['url'])
    assert status == 404
    assert _error(body) == {'error': 'nova token not found', 'status': 404}


def test_a_token_of_a_deleted_server_is_404(cloud):
    server = cloud.boot(cloud.image_path, name='sextant-deleted')['id']
    remote = compute.spice_direct(cloud.admin, server)
    cloud.redactor.add(compute.token_of(remote['url']))
    cloud.delete(server)
    status, body = _get(remote['url'])
    assert status == 404
    assert _error(body) == {'error': 'nova token not found', 'status': 404}
