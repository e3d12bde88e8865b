"""virt-viewer (.vv) files: parse, render, redact, and the direct route's
hand-written .vv.

`ryll --direct` cannot carry a SPICE ticket, so the direct route hands ryll
a minimal .vv of its own (type, host, port, password).
"""

import configparser

from kerbside_tempest_plugin.common import errors

SECTION = 'virt-viewer'
SECRET_KEYS = ('password',)


VVError = errors.VVError


def parse_vv(text):
    """The `[virt-viewer]` section as a dict of strings."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # keep key case
    try:
        parser.read_string(text)
    except configparser.Error as e:
        raise VVError('not a .vv file: %s' % str(e).splitlines()[0]) from None
    if not parser.has_section(SECTION):
        raise VVError('no [%s] section in .vv' % SECTION)
    return dict(parser.items(SECTION))


def render_vv(fields):
    lines = ['[%s]' % SECTION]
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        lines.append('%s=%s' % (key, value))
    return '\n'.join(lines) + '\n'


def direct_vv(host, port, password, tls_port=None, ca=None,
              host_subject=None, title=None):
    """A .vv pointing straight at a SPICE server with its ticket."""
    fields = {'type': 'spice', 'host': host, 'port': port}
    if tls_port:
        fields['tls-port'] = tls_port
    fields['password'] = password
    if ca:
        fields['ca'] = ca.replace('\n', '\\n')
    if host_subject:
        fields['host-subject'] = host_subject
    if title:
        fields['title'] = title
    return render_vv(fields)


def with_port(text, port):
    """The .vv `text` pointing at plain `port` instead (a relay in front
    of the server); a `tls-port` is dropped, since the relay speaks plain.
    """
    fields = parse_vv(text)
    fields['port'] = str(port)
    fields.pop('tls-port', None)
    return render_vv(fields)


def redact_vv(text, mask='<redacted>'):
    """The .vv with every secret value replaced, line by line (works on
    text that does not parse, too).
    """
    out = []
    for line in text.splitlines():
        key, sep, _ = line.partition('=')
        if sep and key.strip().lower() in SECRET_KEYS:
            line = '%s=%s' % (key, mask)
        out.append(line)
    return '\n'.join(out) + ('\n' if text.endswith('\n') else '')


def summary(text):
    """Non-secret facts of a .vv for logs and status output."""
    fields = parse_vv(text)
    keep = ('type', 'host', 'port', 'tls-port', 'host-subject',
            'delete-this-file')
    out = {k: fields[k] for k in keep if k in fields}
    out['has_password'] = bool(fields.get('password'))
    out['has_ca'] = bool(fields.get('ca'))
    return out
