"""Typed errors for everything the digest package rejects.

Every error raised for bad input (a payload, an image, an event that cannot
be encoded) is a subclass of DigestError, so a caller can catch one type and
still read a precise message.
"""

from kerbside_tempest_plugin.common import errors


class DigestError(errors.HarnessError, ValueError):
    """Base class: a digest payload, image or event could not be handled."""

    def __init__(self, message, offset=None):
        self.offset = offset
        if offset is not None:
            message = '%s (at byte offset %d)' % (message, offset)
        super().__init__(message)


class PayloadTooShort(DigestError):
    """Fewer than 62 bytes: no room for header, hash block and trailer."""


class BadMagic(DigestError):
    """The first four bytes are not ASCII SXDG."""


class UnsupportedVersion(DigestError):
    """The schema version byte is not 0x02."""


class BadRecordCount(DigestError):
    """The header record count is below 8 (the hash records alone)."""


class BadHashRecord(DigestError):
    """A hash-block record has the wrong tag or length byte."""


class TrailingByte(DigestError):
    """A single orphan byte sits before the trailer (no room for a TLV)."""


class TruncatedValue(DigestError):
    """A TLV value runs into or past the 4-byte trailer."""


class BadRecordLength(DigestError):
    """A known tag carries a value of the wrong length."""


class BadEnumValue(DigestError):
    """A phase, choice or boolean byte holds an undefined value."""


class EncodeError(DigestError):
    """An event or payload cannot be represented on the wire."""


class ImageError(DigestError):
    """An image could not be loaded or has an unusable shape."""


class QrNotFound(DigestError):
    """No QR code carrying a Sextant digest was found in the image."""
