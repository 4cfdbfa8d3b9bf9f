"""The EXIF Orientation tag of a JPEG file, read from the file's own bytes.

Phones store a photo as the sensor's landscape pixels plus an EXIF Orientation (1..8, TIFF tag 0x0112)
saying how to show them. FFmpeg turns the tag into a display rotation, which cannot express the mirrored
values (2, 4, 5, 7): PyAV's `frame.rotation` reads a left-right mirror as a half turn. So ltxdist reads
the tag itself. Layout (JPEG, ITU T.81; Exif 2.3): SOI, then marker segments (0xFF, marker, big-endian
length including itself); an APP1 segment starting "Exif\\0\\0" holds a TIFF block: byte order "II" or
"MM", 42, the offset of IFD0, then IFD0 = a 2-byte entry count and 12-byte entries (tag, type, count,
value or offset). A SHORT value of count 1 sits in the first two bytes of the value field.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

SOI = b"\xff\xd8"
APP1, SOS, EOI = 0xE1, 0xDA, 0xD9
STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0..7: markers without a length
EXIF_HEADER = b"Exif\x00\x00"
ORIENTATION_TAG, SHORT = 0x0112, 3
_TIFF_HEADER, _ENTRY = 8, 12  # bytes


class ExifError(ValueError):
    """The EXIF data (or the JPEG segments before it) are malformed."""


def jpeg_orientation(path: Path) -> int | None:
    """The EXIF Orientation (1..8) of a JPEG file; None for another kind of file, a JPEG without EXIF or
    without the tag. Malformed EXIF is ignored with a warning naming the file: the picture itself may
    decode fine, and FFmpeg ignores such a block too (no display rotation)."""
    with open(path, "rb") as f:
        if f.read(2) != SOI:
            return None
        try:
            tiff = _exif_block(f)
            return None if tiff is None else tiff_orientation(tiff)
        except ExifError as exc:
            log.warning("%s: its EXIF orientation is ignored (%s)", path, exc)
            return None


def _exif_block(f: BinaryIO) -> bytes | None:
    """The TIFF block of the first EXIF APP1 segment, reading from just after SOI; None when the header
    segments end (start of scan, end of image or of the file) without one."""
    while True:
        where, first = f.tell(), f.read(1)
        if not first:
            return None  # a truncated file: the decoder reports it
        if first != b"\xff":
            raise ExifError(f"no JPEG marker at byte {where}")
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes may precede a marker
            marker = f.read(1)
        if not marker or marker[0] in (SOS, EOI):
            return None
        if marker[0] in STANDALONE:
            continue
        size = f.read(2)
        if len(size) < 2:
            return None  # a truncated file: the decoder reports it
        length = struct.unpack(">H", size)[0] - 2
        if length < 0:
            raise ExifError(f"segment 0xFF{marker[0]:02X} at byte {where} has length {length + 2} < 2")
        if marker[0] != APP1:
            f.seek(length, 1)
            continue
        data = f.read(length)
        if len(data) < length:
            return None
        if data.startswith(EXIF_HEADER):  # not XMP, which is APP1 too
            return data[len(EXIF_HEADER) :]


def tiff_orientation(tiff: bytes) -> int | None:
    """The Orientation in IFD0 of an EXIF TIFF block (1..8), None when IFD0 has none. Every offset is
    checked against the block's size: ExifError otherwise."""
    if len(tiff) < _TIFF_HEADER:
        raise ExifError(f"the EXIF block holds {len(tiff)} bytes, fewer than a TIFF header")
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        raise ExifError(f"TIFF byte order {tiff[:2]!r} is neither b'II' nor b'MM'")
    magic, ifd = struct.unpack_from(f"{order}HI", tiff, 2)
    if magic != 42:
        raise ExifError(f"TIFF magic number {magic}, not 42")
    if ifd < _TIFF_HEADER or ifd + 2 > len(tiff):
        raise ExifError(f"IFD0 at offset {ifd}, outside the {len(tiff)}-byte EXIF block")
    (count,) = struct.unpack_from(f"{order}H", tiff, ifd)
    if ifd + 2 + count * _ENTRY > len(tiff):
        raise ExifError(f"IFD0's {count} entries run past the end of the {len(tiff)}-byte EXIF block")
    for entry in range(ifd + 2, ifd + 2 + count * _ENTRY, _ENTRY):
        tag, kind, values = struct.unpack_from(f"{order}HHI", tiff, entry)
        if tag != ORIENTATION_TAG:
            continue
        if kind != SHORT or values != 1:
            raise ExifError(f"Orientation has type {kind} and count {values}, not one SHORT (type 3)")
        (value,) = struct.unpack_from(f"{order}H", tiff, entry + 8)
        if not 1 <= value <= 8:
            raise ExifError(f"Orientation {value} is not one of 1..8")
        return value
    return None
