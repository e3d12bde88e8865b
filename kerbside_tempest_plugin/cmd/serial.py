"""sextant-serial: parse a Sextant serial drain, replay its CRC32C chains.

  sextant-serial parse LOG              one JSON object per record
  sextant-serial chains LOG [--upto N]  the eight channel hashes after
                                        replaying the first N event records

LOG may be '-' for stdin. Exit 0 on success, 1 when the log holds no valid
drain record or a malformed one (one-line reason on stderr), 2 on usage
errors.
"""

import argparse
import sys

from kerbside_tempest_plugin.cmd import _oracle_cli as _common
from kerbside_tempest_plugin.digest import chains
from kerbside_tempest_plugin.sextant import drain

PROG = 'sextant-serial'


def _non_negative(value):
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not an integer' % value)
    if n < 0:
        raise argparse.ArgumentTypeError('%d is negative' % n)
    return n


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description='Parse the Sextant serial drain.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    p = sub.add_parser('parse', help='print each drain record as JSON')
    p.add_argument('log', metavar='LOG')
    p = sub.add_parser('chains', help='replay the drain through the CRC32C '
                       'channel chains')
    p.add_argument('log', metavar='LOG')
    p.add_argument('--upto', type=_non_negative, default=None, metavar='N',
                   help='replay only the first N event records')
    return parser


def main(argv=None):
    return _common.guarded(_main, argv)


def _main(argv):
    args = build_parser().parse_args(argv)
    try:
        parsed = drain.parse(_common.read_input(args.log, binary=True))
    except OSError as e:
        _common.complain(PROG, args.log, 'cannot read: %s' % (
            e.strerror or e))
        return _common.EXIT_BAD_INPUT
    except drain.SerialParseError as e:
        _common.complain(PROG, args.log, e)
        return _common.EXIT_BAD_INPUT
    if not parsed.records and not parsed.complete:
        _common.complain(PROG, args.log, 'no drain records found')
        return _common.EXIT_BAD_INPUT
    if args.command == 'parse':
        for record in parsed.all_records():
            _common.emit(record.to_json())
    else:
        if args.upto is not None and args.upto > len(parsed.records):
            _common.complain(PROG, args.log, '--upto %d but the drain has '
                             'only %d event records'
                             % (args.upto, len(parsed.records)))
            return _common.EXIT_BAD_INPUT
        _common.emit(chains.ChannelChains.replay(
            parsed.to_events(args.upto)).hashes)
    if not parsed.complete:
        _common.complain(PROG, args.log, 'warning: drain incomplete (no '
                         'type=refresh_stats terminator)')
    return _common.EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
