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
               help='A local Kerbside checkout to install into the lane '
                    'instead of kerbside==0.8.0 from PyPI.'),
    cfg.StrOpt('artifact_dir', default=None,
               help='Where each test writes its artifacts (screenshots, '
                    'digests, serial log, process logs, report). Unset '
                    'means ./artifacts under the current directory.'),
    cfg.IntOpt('step_timeout', default=90,
               help='Deadline in seconds for each beat of a scenario.'),
    cfg.IntOpt('boot_timeout', default=120,
               help='Deadline in seconds for the guest banner on serial.'),
]

sextant_group = cfg.OptGroup(
    name='sextant', title='Uncalibrated Sextant test guest options')

SextantGroup = [
    cfg.StrOpt('image', default=None,
               help='Path (or provider image reference) of the Sextant '
                    'image. Unset means the Sextant-compatible guest built '
                    'from images/ in this project.'),
    cfg.StrOpt('paste_secret', default='sextant{HELLO_OPERATOR}',
               help='The decoded bootloader payload the guest expects.'),
    cfg.IntOpt('paste_char_delay_ms', default=20,
               help='Delay between pasted characters. The guest polls the '
                    'keyboard every 50 ms; the firmware buffers keys.'),
]

direct_qemu_group = cfg.OptGroup(
    name='direct_qemu', title='Direct qemu guest provider options')

DirectQemuGroup = [
    cfg.StrOpt('qemu_binary', default='qemu-system-x86_64',
               help='The qemu system emulator.'),
    cfg.StrOpt('accel', default='auto', choices=['auto', 'kvm', 'tcg'],
               help='Accelerator. auto probes KVM with a real OVMF boot and '
                    'falls back to TCG, saying which it chose.'),
    cfg.StrOpt('ovmf_code', default=None,
               help='OVMF code image; unset means search the Debian paths.'),
    cfg.StrOpt('ovmf_vars', default=None,
               help='OVMF vars template; a per-guest copy is used.'),
    cfg.IntOpt('memory_mb', default=256, help='Guest memory.'),
]


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
    ]


def get_opt_lists():
    return [(group.name, opts) for group, opts in _groups()] + [
        ('service_available', [service_option])]


def list_opts():
    """The oslo.config.opts entry point for oslo-config-generator."""
    return [(group, opts) for group, opts in _groups()] + [
        ('service_available', [service_option])]
