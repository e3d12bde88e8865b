"""Configuration options of the plugin.

Everything here is plain oslo.config: importing this module never imports
tempest, so the libraries and the command-line tools can use the defaults.
"""

from oslo_config import cfg

service_option = cfg.BoolOpt(
    'kerbside', default=False,
    help='Whether a Kerbside console lane is available to test. The '
         'scenario tests skip unless this is true.')

kerbside_group = cfg.OptGroup(
    name='kerbside', title='Kerbside SPICE console harness options')

KerbsideGroup = [
    cfg.StrOpt('provider', default='direct_qemu',
               choices=['direct_qemu', 'nova', 'shakenfist'],
               help='The guest provider that boots the test guest.'),
    cfg.StrOpt('route', default='kerbside', choices=['kerbside', 'direct'],
               help='How ryll reaches the guest console: through the '
                    'Kerbside proxy, or straight to the hypervisor. '
                    'Comparing both tells a proxy fault from a guest or '
                    'client fault.'),
    cfg.StrOpt('ryll_binary', default='ryll',
               help='The ryll executable (PyPI ryll==0.3.0 by default, or '
                    'a local build).'),
    cfg.StrOpt('kerbside_venv', default=None,
               help='A virtualenv holding kerbside and kerbside-proxy for '
                    'the direct-qemu lane. Unset means the harness cache '
                    '(~/.cache/kerbside-tempest-plugin/kerbside-venv).'),
    cfg.StrOpt('kerbside_source', default=None,
               help='A local Kerbside checkout to install into the '
                    'direct_qemu lane\'s Kerbside venv instead of '
                    'kerbside==0.8.0 from PyPI. Unset means '
                    '$KERBSIDE_SOURCE, else the venv as it is. The lane '
                    'installs the checkout when the venv holds something '
                    'else or the checkout changed since.'),
    cfg.StrOpt('proxy_binary', default=None,
               help='A kerbside-proxy binary (e.g. a local cargo build) '
                    'for the direct_qemu lane\'s Kerbside daemon to run: '
                    'KERBSIDE_PROXY_BIN. Unset means $KERBSIDE_PROXY_BIN, '
                    'else the Kerbside venv\'s kerbside-proxy.'),
    cfg.StrOpt('firewall_mode', default=None, choices=['enforce', 'warn'],
               help='Kerbside\'s FIREWALL_MODE on the direct_qemu lane: '
                    'enforce applies the proxy\'s blocking verdicts, warn '
                    'forwards and logs them. Unset means Kerbside\'s '
                    'default (enforce).'),
    cfg.ListOpt('firewall_permitted_channels', default=None,
                help='Kerbside\'s FIREWALL_PERMITTED_CHANNELS on the '
                     'direct_qemu lane: the SPICE channels the proxy may '
                     'relay, of main, display, inputs, cursor, playback, '
                     'record, tunnel, smartcard, usbredir, port, webdav. '
                     'Unset or empty means Kerbside\'s default (every '
                     'channel).'),
    cfg.BoolOpt('hypervisor_tls', default=None,
                help='Whether the direct_qemu lane\'s hypervisor leg '
                     '(Kerbside to qemu, and the direct route) is TLS. '
                     'Unset: $KTP_HYPERVISOR_TLS, else on. A fault relay '
                     'turns it off.'),
    cfg.StrOpt('fault', default=None,
               help='A fault for the direct_qemu lane\'s fault relay on the '
                    'hypervisor leg (spice.faults: for example '
                    '"drop,channel=inputs,type=key_down,after_keys=5"; '
                    '";" joins several). Unset: $KTP_FAULT, else none. '
                    'Every test of the class then runs with it: a test run '
                    'that should fail.'),
    cfg.BoolOpt('fault_relay', default=None,
                help='Put the fault relay on the hypervisor leg without a '
                     'fault (faults can be armed later). Unset: '
                     '$KTP_RELAY, else off.'),
    cfg.IntOpt('console_token_duration', default=None, min=0,
               help='Kerbside\'s CONSOLE_TOKEN_DURATION on the direct_qemu '
                    'lane: the minutes a console token (a .vv password) '
                    'stays usable. Unset means Kerbside\'s default (1).'),
    cfg.StrOpt('api_url', default=None,
               help='Kerbside\'s REST API in front of a cloud (e.g. '
                    'http://kerbside.example.com:13002), for the promise '
                    'tests there (provider nova): sessions, audit and '
                    'terminate. Unset: those tests skip. The direct_qemu '
                    'lane runs a Kerbside of its own and ignores this.'),
    cfg.StrOpt('metrics_url', default=None,
               help='The Kerbside proxy\'s Prometheus metrics (e.g. '
                    'http://kerbside.example.com:13005/metrics): the cloud '
                    'promise tests count refused links in '
                    'kerbside_proxy_denied_total.'),
    cfg.StrOpt('openstack_source', default=None,
               help='The name of the Kerbside source (type openstack) that '
                    'serves this cloud\'s consoles: a Nova server\'s '
                    'console is <source>/<server id> in Kerbside\'s '
                    'sessions and audit trail.'),
    cfg.StrOpt('api_username', default=None,
               help='The Keystone user the cloud promise tests log in to '
                    'Kerbside\'s API as (POST /auth): Kerbside checks the '
                    'password with Keystone, scoped to project admin, and '
                    'wants the user in its KEYSTONE_ACCESS_GROUP.'),
    cfg.StrOpt('api_password', default=None, secret=True,
               help='The password of api_username. Never logged.'),
    cfg.StrOpt('artifact_dir', default=None,
               help='Where each test writes its artifacts (screenshots, '
                    'digests, serial log, process logs, report). Unset '
                    'means ./artifacts under the current directory.'),
    cfg.IntOpt('step_timeout', default=90,
               help='Deadline in seconds for each beat of a scenario.'),
    cfg.IntOpt('boot_timeout', default=120,
               help='Deadline in seconds from the guest\'s start to its '
                    'banner on serial (the provider\'s build_timeout, for '
                    'a cloud server to become active, comes first).'),
    cfg.BoolOpt('ryll_capture', default=True,
                help='Run ryll with --capture and keep what it writes in '
                     'the test\'s artifact directory (ryll/): one pcap per '
                     'SPICE channel, as decrypted after the link stage, '
                     'and its metadata.json. Costs about half a megabyte '
                     'per walk; see docs/plans/reports-and-evidence.md.'),
    cfg.BoolOpt('ryll_pedantic', default=True,
                help='Run ryll with --pedantic and keep the bug-report zip '
                     'it writes for each distinct SPICE protocol gap it '
                     'sees (none on a clean walk).'),
]

sextant_group = cfg.OptGroup(
    name='sextant', title='Uncalibrated Sextant test guest options')

SextantGroup = [
    cfg.StrOpt('image', default=None,
               help='Path (or provider image reference) of the Sextant '
                    'image. Unset means $SEXTANT_IMAGE, else, on '
                    'direct_qemu, the Sextant-compatible guest bundled with '
                    'the plugin, built into ~/.cache/kerbside-tempest-plugin'
                    '/images on first use.'),
    cfg.StrOpt('paste_secret', default='sextant{HELLO_OPERATOR}',
               help='The decoded bootloader payload the guest expects.'),
    # The default is sextant.contract.PASTE_CHAR_DELAY_MS (checked by a
    # unit test; this module stays free of project imports).
    cfg.IntOpt('paste_char_delay_ms', default=50,
               help='Delay between pasted characters. The guest polls the '
                    'keyboard every 50 ms; pasting faster relies on qemu\'s '
                    '16-byte PS/2 queue and the firmware keeping up, which '
                    'lost a character under load at 20 ms.'),
]

direct_qemu_group = cfg.OptGroup(
    name='direct_qemu', title='Direct qemu guest provider options')

DirectQemuGroup = [
    cfg.StrOpt('qemu_binary', default=None,
               help='The qemu system emulator (unset: $KTP_QEMU_BINARY, '
                    'else qemu-system-x86_64).'),
    cfg.StrOpt('accel', default='auto', choices=['auto', 'kvm', 'tcg'],
               help='Accelerator. auto probes KVM with a real OVMF boot and '
                    'falls back to TCG, saying which it chose.'),
    cfg.StrOpt('ovmf_code', default=None,
               help='OVMF code image; unset means search the Debian paths.'),
    cfg.StrOpt('ovmf_vars', default=None,
               help='OVMF vars template; a per-guest copy is used.'),
    cfg.IntOpt('memory_mb', default=256, help='Guest memory.'),
]


# tempest's [compute] build_timeout when tempest is not configured.
DEFAULT_BUILD_TIMEOUT = 300


def cloud_provider_opts(what, build_state, console_timeout, console_help):
    """The options every cloud provider group has, built once: the deadlines
    and polls of a guest's life and of Kerbside's .vv, with one name per
    concept (`build_timeout` as in tempest's [compute], `serial_poll_interval`
    for the serial source).
    """
    return [
        cfg.IntOpt('build_timeout', default=None,
                   deprecated_name='boot_timeout',
                   help='Deadline in seconds for the %s to become %s. '
                        'Unset: tempest\'s [compute] build_timeout (%d s '
                        'without tempest).' % (what, build_state,
                                               DEFAULT_BUILD_TIMEOUT)),
        cfg.IntOpt('delete_timeout', default=120,
                   help='Deadline in seconds for the %s to be deleted.'
                   % what),
        cfg.FloatOpt('poll_interval', default=2.0,
                     help='Seconds between %s status polls.' % what),
        cfg.IntOpt('console_timeout', default=console_timeout,
                   help='Deadline in seconds for Kerbside to serve the .vv'
                        '%s' % console_help),
        cfg.StrOpt('console_ca_file', default=None,
                   help='CA bundle to verify Kerbside when fetching the .vv '
                        'over https. Unset uses the system CAs.'),
        cfg.BoolOpt('console_verify', default=True,
                    help='Verify Kerbside\'s certificate when fetching the '
                         '.vv.'),
    ]


def _serial_poll_opt(deprecated_name=None):
    return cfg.FloatOpt('serial_poll_interval', default=2.0,
                        deprecated_name=deprecated_name,
                        help='Seconds between polls of the guest\'s serial '
                             'output (the console-output API).')


nova_provider_group = cfg.OptGroup(
    name='nova_provider', title='Nova guest provider options')

NovaProviderGroup = [
    cfg.StrOpt('image_ref', default=None,
               help='Glance image to boot (the Sextant image uploaded with '
                    'hw_video_model=qxl, hw_firmware_type=uefi and '
                    'hw_machine_type=q35).'),
    cfg.StrOpt('flavor_ref', default=None,
               help='Flavor to boot with. Unset: tempest\'s [compute] '
                    'flavor_ref.'),
    cfg.StrOpt('network', default=None,
               help='Network UUID for the server, or auto / none (needed '
                    'from microversion 2.37). Unset omits networks.'),
    cfg.StrOpt('microversion', default='2.99',
               help='Compute microversion for spice-direct consoles (2.99, '
                    'Nova 2025.1 Epoxy, or later).'),
    cfg.StrOpt('hypervisor_ca_file', default=None,
               help='CA that signed the hypervisors\' SPICE certificates. '
                    'Set: the direct route goes to the tls_port Nova '
                    'gives, verified with it. Unset: the plain port.'),
    _serial_poll_opt(),
] + cloud_provider_opts(
    'server', 'ACTIVE', 60, ' for a spice-direct console URL.')

shakenfist_provider_group = cfg.OptGroup(
    name='shakenfist_provider', title='Shaken Fist guest provider options')

ShakenFistProviderGroup = [
    cfg.StrOpt('api_url', default=None,
               help='Shaken Fist API URL (e.g. http://sf-primary:13000/api).'),
    cfg.StrOpt('namespace', default=None,
               help='Shaken Fist namespace to boot in.'),
    cfg.StrOpt('key', default=None, secret=True,
               help='Key of the namespace. Never logged.'),
    cfg.StrOpt('image', default=None,
               help='Disk base of the guest: a label, URL or '
                    'sf://upload/<namespace>/<name> reference.'),
    cfg.IntOpt('cpus', default=1, help='Guest vCPUs.'),
    cfg.IntOpt('memory_mb', default=1024, help='Guest memory in MB.'),
    cfg.IntOpt('disk_gb', default=1, help='Guest disk size in GB.'),
    cfg.StrOpt('disk_bus', default=None,
               help='Disk bus (virtio, sata, ...). Unset: the Shaken Fist '
                    'default.'),
    cfg.StrOpt('video_model', default='qxl',
               choices=['qxl', 'cirrus', 'vga'],
               help='Guest video model.'),
    cfg.IntOpt('video_memory_kb', default=16384,
               help='Guest video memory in KiB.'),
    cfg.StrOpt('network', default=None,
               help='Network UUID to attach. Unset: no network.'),
    _serial_poll_opt(deprecated_name='console_poll_interval'),
    cfg.IntOpt('console_data_length', default=200000,
               help='Bytes of console data fetched per poll (the tail of '
                    'the log).'),
] + cloud_provider_opts(
    'instance', "state 'created'", 180,
    '. Kerbside learns consoles by scraping every 60 s and answers 404 '
    'until then.')


def compute_option(conf, name, default):
    """tempest's [compute] `name` where it means the same thing as ours;
    `default` when tempest's options are not registered (the libraries
    and unit tests run without tempest).
    """
    try:
        return getattr(conf.compute, name)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError, AttributeError):
        return default


def register_opts(conf):
    conf.register_opt(service_option, group='service_available')
    for group, opts in _groups():
        conf.register_group(group)
        conf.register_opts(opts, group=group)


def _groups():
    return [
        (kerbside_group, KerbsideGroup),
        (sextant_group, SextantGroup),
        (direct_qemu_group, DirectQemuGroup),
        (nova_provider_group, NovaProviderGroup),
        (shakenfist_provider_group, ShakenFistProviderGroup),
    ]


def get_opt_lists():
    return [(group.name, opts) for group, opts in _groups()] + [
        ('service_available', [service_option])]


def list_opts():
    """The oslo.config.opts entry point for oslo-config-generator."""
    return [(group, opts) for group, opts in _groups()] + [
        ('service_available', [service_option])]
