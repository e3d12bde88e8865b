"""sextant-digest: decode visual digests from images or raw payloads.

  sextant-digest decode IMAGE...   one JSON object per image
  sextant-digest payload HEX...    one JSON object per hex payload

Exit 0 when every input held a valid digest, 1 when any did not (with a
one-line reason per failure on stderr), 2 on usage errors.
"""

import argparse
import binascii
import sys

from kerbside_tempest_plugin.cmd import _oracle_cli as _common
from kerbside_tempest_plugin.digest import errors
from kerbside_tempest_plugin.digest import frame
from kerbside_tempest_plugin.digest import payload

PROG = 'sextant-digest'


def _decode_image(path):
    out = {'image': path}
    try:
        src = _common.read_input(path, binary=True) if path == '-' else path
        analysis = frame.analyse(src)
    except errors.DigestError as e:
        out.update(found=False, error=str(e), error_type=type(e).__name__)
        return out, e
    out.update(analysis.to_json())
    return out, None


def _decode_hex(text):
    cleaned = ''.join(text.split()).replace(':', '')
    if cleaned[:2].lower() == '0x':
        cleaned = cleaned[2:]
    out = {'payload': text}
    try:
        try:
            data = binascii.unhexlify(cleaned)
        except (binascii.Error, ValueError) as e:
            raise errors.DigestError('not a hex string: %s' % e) from None
        digest = payload.decode(data)
    except errors.DigestError as e:
        out.update(found=False, error=str(e), error_type=type(e).__name__)
        return out, e
    out['found'] = True
    out.update(digest.to_json())
    return out, None


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description='Decode Sextant visual digests.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    p = sub.add_parser('decode', help='find and decode the digest QR in '
                       'images (PNG or any format PIL reads; - for stdin)')
    p.add_argument('images', nargs='+', metavar='IMAGE')
    p = sub.add_parser('payload', help='decode raw payloads given as hex')
    p.add_argument('payloads', nargs='+', metavar='HEX')
    return parser


def main(argv=None):
    return _common.guarded(_main, argv)


def _main(argv):
    args = build_parser().parse_args(argv)
    if args.command == 'decode':
        inputs, handler = args.images, _decode_image
    else:
        inputs, handler = args.payloads, _decode_hex
    status = _common.EXIT_OK
    for item in inputs:
        out, error = handler(item)
        _common.emit(out)
        if error is not None:
            _common.complain(PROG, item if len(item) < 80 else
                             item[:77] + '...', error)
            status = _common.EXIT_BAD_INPUT
    return status


if __name__ == '__main__':
    sys.exit(main())
