"""TLS material for a lane, made with the openssl command.

- a CA (X.509 v3, CA:TRUE);
- a proxy certificate signed by it, X.509 v3 (rustls rejects v1), with
  SAN IP:127.0.0.1 and DNS:localhost;
- optionally a qemu x509 directory with qemu's fixed file names
  (ca-cert.pem, server-cert.pem, server-key.pem) for a SPICE TLS port.

Certificates are public and live in `tls/`; private keys are 0600 and live
in the secrets directory.
"""

import dataclasses
import os
import subprocess

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import tools

DEFAULT_SUBJECT = (('C', 'US'), ('O', 'Kerbside Harness'),
                   ('CN', 'kerbside-harness-proxy'))
DAYS = 30


TLSError = errors.TLSError


def subject_slash(subject):
    return ''.join('/%s=%s' % kv for kv in subject)


def subject_comma(subject):
    """The form Kerbside's PROXY_HOST_SUBJECT and a .vv host-subject use."""
    return ','.join('%s=%s' % kv for kv in subject)


@dataclasses.dataclass
class TLSMaterial:
    ca_cert: str
    ca_key: str
    cert: str
    key: str
    host_subject: str
    qemu_x509_dir: str = None

    def ca_pem(self):
        with open(self.ca_cert) as f:
            return f.read()


def _openssl(args, what):
    proc = subprocess.run([tools.find('openssl')] + args,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise TLSError('openssl failed making %s (exit %d): %s' % (
            what, proc.returncode, proc.stderr.strip()[-800:]))
    return proc


def _key(path):
    _openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt',
              'rsa_keygen_bits:2048', '-out', path], 'a key')
    os.chmod(path, 0o600)


def _ca(cert, key, cn):
    _key(key)
    _openssl(['req', '-x509', '-new', '-key', key, '-sha256', '-days',
              str(DAYS), '-subj', '/CN=%s' % cn,
              '-addext', 'basicConstraints=critical,CA:TRUE',
              '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
              '-addext', 'subjectKeyIdentifier=hash',
              '-out', cert], 'the CA certificate')


def _leaf(cert, key, ca_cert, ca_key, subject, san, workdir):
    _key(key)
    csr = os.path.join(workdir, os.path.basename(cert) + '.csr')
    ext = os.path.join(workdir, os.path.basename(cert) + '.ext')
    lines = ['basicConstraints=critical,CA:FALSE',
             'keyUsage=critical,digitalSignature,keyEncipherment',
             'extendedKeyUsage=serverAuth',
             'subjectKeyIdentifier=hash',
             'authorityKeyIdentifier=keyid,issuer']
    if san:
        lines.append('subjectAltName=%s' % san)
    with open(ext, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    _openssl(['req', '-new', '-key', key, '-subj', subject_slash(subject),
              '-out', csr], 'a certificate request')
    _openssl(['x509', '-req', '-in', csr, '-CA', ca_cert, '-CAkey', ca_key,
              '-CAcreateserial', '-days', str(DAYS), '-sha256',
              '-extfile', ext, '-out', cert], 'a certificate')
    for p in (csr, ext):
        os.unlink(p)
    _openssl(['verify', '-CAfile', ca_cert, cert], 'a verification')


def make_tls(cert_dir, key_dir, subject=DEFAULT_SUBJECT, qemu=False):
    """Fresh CA and proxy certificate (and qemu x509 files when `qemu`)."""
    os.makedirs(cert_dir, exist_ok=True)
    os.makedirs(key_dir, mode=0o700, exist_ok=True)
    ca_cert = os.path.join(cert_dir, 'ca-cert.pem')
    ca_key = os.path.join(key_dir, 'ca-key.pem')
    cert = os.path.join(cert_dir, 'proxy-cert.pem')
    key = os.path.join(key_dir, 'proxy-key.pem')
    _ca(ca_cert, ca_key, 'kerbside-harness-ca')
    _leaf(cert, key, ca_cert, ca_key, subject,
          'IP:127.0.0.1,DNS:localhost', key_dir)
    material = TLSMaterial(ca_cert, ca_key, cert, key,
                           subject_comma(subject))
    if qemu:
        material.qemu_x509_dir = make_qemu_x509(
            os.path.join(key_dir, 'qemu-x509'), ca_cert, ca_key)
    return material


def make_qemu_x509(x509_dir, ca_cert, ca_key, cn='qemu-hv'):
    """qemu's x509-dir: ca-cert.pem, server-cert.pem, server-key.pem.

    qemu reads the key from the same directory, so the whole directory is
    private (0700) and lives with the secrets.
    """
    os.makedirs(x509_dir, mode=0o700, exist_ok=True)
    with open(ca_cert) as src, open(os.path.join(x509_dir, 'ca-cert.pem'),
                                    'w') as dst:
        dst.write(src.read())
    _leaf(os.path.join(x509_dir, 'server-cert.pem'),
          os.path.join(x509_dir, 'server-key.pem'), ca_cert, ca_key,
          (('CN', cn),), 'IP:127.0.0.1,DNS:localhost', x509_dir)
    return x509_dir


def make_self_contained_x509(x509_dir):
    """A CA and qemu server certificate in one private directory (for a
    provider used without a lane).
    """
    os.makedirs(x509_dir, mode=0o700, exist_ok=True)
    ca_cert = os.path.join(x509_dir, 'ca-cert.pem')
    ca_key = os.path.join(x509_dir, 'ca-key.pem')
    _ca(ca_cert, ca_key, 'kerbside-harness-qemu-ca')
    _leaf(os.path.join(x509_dir, 'server-cert.pem'),
          os.path.join(x509_dir, 'server-key.pem'), ca_cert, ca_key,
          (('CN', 'qemu-hv'),), 'IP:127.0.0.1,DNS:localhost', x509_dir)
    return x509_dir
