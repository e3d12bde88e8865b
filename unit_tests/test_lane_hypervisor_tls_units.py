"""The static source's TLS leg as the lane renders it, and qemu's
TLS-only command line (docs/contracts/kerbside.md §15)."""

import yaml

from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.providers import direct_qemu

PEM = ('-----BEGIN CERTIFICATE-----\nMIIBfake\nline2==\n'
       '-----END CERTIFICATE-----\n')


def _kerbside(tmp_path, **kw):
    secrets = common_secrets.SecretStore(str(tmp_path / 'secrets'))
    return lane_kerbside.Kerbside(
        venv=None, workdir=str(tmp_path / 'w'), run_dir=str(tmp_path),
        secrets=secrets, registry=None, tls=None, sql_url='mysql://x',
        api_port=1, secure_port=2, insecure_port=3, metrics_port=4,
        console_uuid='6f4e2c1a-0000-0000-0000-000000000001',
        guest_port=5910, ticket='012345', **kw)


def test_sources_yaml_with_tls_leg(tmp_path):
    ca = tmp_path / 'ca.pem'
    ca.write_text(PEM)
    kb = _kerbside(tmp_path, guest_tls_port=5911, guest_ca_cert=str(ca),
                   guest_host_subject='CN=qemu-hv')
    [source] = yaml.safe_load(kb.sources_yaml())
    assert source['type'] == 'static'
    assert source['ca_cert'] == PEM
    [console] = source['consoles']
    assert console['insecure_port'] == 5910
    assert console['secure_port'] == 5911
    assert console['host_subject'] == 'CN=qemu-hv'
    assert console['ticket'] == '012345'
    redacted = yaml.safe_load(kb.sources_yaml(ticket='<redacted>'))
    assert redacted[0]['consoles'][0]['ticket'] == '<redacted>'
    assert redacted[0]['ca_cert'] == PEM


def test_sources_yaml_without_tls_leg_is_unchanged(tmp_path):
    [source] = yaml.safe_load(_kerbside(tmp_path).sources_yaml())
    assert 'ca_cert' not in source
    [console] = source['consoles']
    assert sorted(console) == ['hypervisor', 'hypervisor_ip',
                               'insecure_port', 'name', 'ticket', 'uuid']


def _spice_arg(**kw):
    argv = direct_qemu.build_argv(
        'qemu', 'g', 'tcg', 256, 'code.fd', 'vars.fd', 'serial.log',
        'ticket', 5910, 'qmp.sock', **kw)
    return argv[argv.index('-spice') + 1].split(',')


def test_qemu_tls_only_refuses_plain_channels():
    spice = _spice_arg(tls_port=5911, x509_dir='/x', tls_only=True)
    assert 'tls-port=5911' in spice and 'x509-dir=/x' in spice
    assert 'tls-channel=default' in spice
    assert 'tls-channel=default' not in _spice_arg(tls_port=5911,
                                                   x509_dir='/x')
    assert 'tls-channel=default' not in _spice_arg(tls_only=True)
