"""The EXIF Orientation tag of a still image (JPEG, PNG, WebP), read from the file's own bytes.

Phones store a photo as the sensor's landscape pixels plus an EXIF Orientation (1..8, TIFF tag 0x0112)
saying how to show them. FFmpeg turns the tag into a display rotation, which cannot express the mirrored
values (2, 4, 5, 7): PyAV's `frame.rotation` reads a left-right mirror as a half turn. So ltxdist reads
the tag itself, from the three still containers whose EXIF FFmpeg applies:

- JPEG (ITU T.81; Exif 2.3): SOI, then marker segments (0xFF, marker, big-endian length including
  itself); an APP1 segment starting "Exif\\0\\0" holds the TIFF block.
- PNG (PNG 3rd edition): an 8-byte signature, then chunks (big-endian data length, type, data, CRC);
  an `eXIf` chunk holds the TIFF block.
- WebP (RIFF): "RIFF", size, "WEBP", then chunks (fourcc, little-endian data length, data padded to an
  even length); an `EXIF` chunk holds the TIFF block.

The TIFF block: byte order "II" or "MM", 42, the offset of IFD0, then IFD0 = a 2-byte entry count and
12-byte entries (tag, type, count, value or offset). A SHORT value of count 1 sits in the first two
bytes of the value field.

Every length read from a file is checked against the file's size before anything is read or skipped:
a broken or hostile header costs at most one pass over the file and no allocation beyond its size.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

SOI = b"\xff\xd8"
APP1, SOS, EOI = 0xE1, 0xDA, 0xD9
STANDALONE = {0xD8, *range(0xD0, 0xD8)}  # SOI, RST0..7: markers without a length
EXIF_HEADER = b"Exif\x00\x00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORIENTATION_TAG, SHORT = 0x0112, 3
_TIFF_HEADER, _ENTRY = 8, 12  # bytes
_SCAN_BLOCK = 4096  # bytes read at a time when looking for the next JPEG marker
_JPEG_MARKER = re.compile(rb"\xff[\xc0-\xfe]")  # FFmpeg: SOF0..COM


class ExifError(ValueError):
    """The EXIF data are malformed."""


def exif_orientation(path: Path, codec: str) -> int | None:
    """The EXIF Orientation (1..8) of a still that FFmpeg decodes with `codec` (mjpeg, png or webp:
    FFmpeg 8 applies these containers' EXIF as a display rotation); None for another codec, a file
    without EXIF, without the tag, or with Orientation 0 ("undefined" to some writers; FFmpeg applies no
    rotation for it). ExifError when the EXIF block is malformed."""
    find_block = _EXIF_BLOCK_READERS.get(codec)
    if find_block is None:
        return None
    with open(path, "rb") as f:
        tiff = find_block(f, os.fstat(f.fileno()).st_size)
    return None if tiff is None else tiff_orientation(tiff)


def _next_jpeg_marker(f: BinaryIO) -> int | None:
    """The next marker's code, reading just past it; None at the end of the file. As in FFmpeg's mjpeg
    decoder, a marker is 0xFF followed by 0xC0..0xFE: fill bytes (0xFF 0xFF), stuffed zeros (0xFF 0x00)
    and stray bytes between segments are skipped (libjpeg, too, only warns "extraneous bytes before
    marker" and scans on). Blocks of the file are searched, so a long run of garbage costs one pass."""
    while True:
        start, block = f.tell(), f.read(_SCAN_BLOCK)
        if found := _JPEG_MARKER.search(block):
            f.seek(start + found.end())
            return block[found.end() - 1]
        if len(block) < _SCAN_BLOCK:
            return None
        f.seek(start + len(block) - 1)  # a final 0xFF may start a marker that the next block ends


def _jpeg_exif_block(f: BinaryIO, size: int) -> bytes | None:
    """The TIFF block of the first EXIF APP1 segment (the one FFmpeg applies); None when the header
    segments end (start of scan, end of image or of the file) without one, or for another kind of
    file."""
    if f.read(2) != SOI:
        return None
    while (marker := _next_jpeg_marker(f)) is not None:
        if marker in (SOS, EOI):
            return None
        if marker in STANDALONE:
            continue
        header = f.read(2)
        if len(header) < 2:
            return None  # a truncated file: the decoder reports it
        length = int.from_bytes(header, "big") - 2
        if length < 0:
            continue  # no way to know where this segment ends: FFmpeg scans on to the next marker too
        if length > size - f.tell():
            return None  # truncated
        if marker != APP1:
            f.seek(length, os.SEEK_CUR)
            continue
        data = f.read(length)
        if data.startswith(EXIF_HEADER):  # not XMP, which is APP1 too
            return data[len(EXIF_HEADER) :]
    return None


def _png_exif_block(f: BinaryIO, size: int) -> bytes | None:
    """The TIFF block of a PNG's eXIf chunk, before or after the image data (FFmpeg reads both); of the
    last one if there are several (only one is allowed; FFmpeg keeps the last). CRCs are not checked:
    FFmpeg does not by default either. None without one, or for another kind of file."""
    if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
        return None
    found = None
    while len(header := f.read(8)) == 8:
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND" or length + 4 > size - f.tell():
            break  # the end of the image, or a truncated chunk (+ 4: its CRC)
        if kind == b"eXIf":
            found = f.read(length)
        else:
            f.seek(length, os.SEEK_CUR)
        f.seek(4, os.SEEK_CUR)
    return found


def _webp_exif_block(f: BinaryIO, size: int) -> bytes | None:
    """The TIFF block of a WebP's first EXIF chunk (the one FFmpeg applies), wherever it is and whether
    or not the VP8X header announces it (FFmpeg reads it either way); None without one, or for another
    kind of file. Chunks are walked to the end of the file, not of the RIFF size, as FFmpeg does.

    Some tools write the block behind a JPEG-style "Exif\\0\\0" prefix. FFmpeg then ignores it (no
    rotation), but its writer meant the orientation: ltxdist applies it."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WEBP":
        return None
    while len(header := f.read(8)) == 8:
        kind, length = struct.unpack("<4sI", header)
        if length > size - f.tell():
            return None  # truncated
        if kind == b"EXIF":
            data = f.read(length)
            return data[len(EXIF_HEADER) :] if data.startswith(EXIF_HEADER) else data
        f.seek(length + length % 2, os.SEEK_CUR)  # data is padded to an even length
    return None


_EXIF_BLOCK_READERS: dict[str, Callable[[BinaryIO, int], bytes | None]] = {
    "mjpeg": _jpeg_exif_block,
    "png": _png_exif_block,
    "apng": _png_exif_block,  # an animated PNG: the same chunks (FFmpeg applies its eXIf too)
    "webp": _webp_exif_block,
}


def tiff_orientation(tiff: bytes) -> int | None:
    """The Orientation in IFD0 of an EXIF TIFF block (1..8); None when IFD0 has none or it is 0
    ("undefined"). Every offset is checked against the block's size: ExifError otherwise."""
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
        # Two SHORTs still sit in the 4-byte value field; FFmpeg takes the first, and so does ltxdist.
        if kind != SHORT or values not in (1, 2):
            raise ExifError(f"Orientation has type {kind} and count {values}, not one SHORT (type 3)")
        (value,) = struct.unpack_from(f"{order}H", tiff, entry + 8)
        if value == 0:
            return None  # written by some software for "undefined": as if absent, as FFmpeg reads it
        if not 1 <= value <= 8:
            raise ExifError(f"Orientation {value} is not one of 1..8")
        return value
    return None
