"""Cheap checks of a crop's JPEG bytes before any pixel work (the loader's first line of defence).

A value that fails here is never handed to DALI: a truncated or garbage value, or a JPEG whose
frame header says it is not the shard's crop size (a 271 px crop under 511 px metadata would
make the crop window read outside the image).  Garbled entropy data that still parses is the
job of the shard reader's per-crop checksum and, last, of DALI's decoder.
"""
from __future__ import annotations

# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic);
# 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share the range but are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])   # TEM, RSTn, SOI: no length field
_SOS, _EOI = 0xDA, 0xD9


def looks_like_jpeg(data) -> bool:
    """JPEG SOI marker first and an EOI marker at the very end (trailing zero padding
    tolerated).  Catches truncated and garbage values."""
    if data is None or len(data) < 4 or data[:2] != b"\xff\xd8":
        return False
    return data.rfind(b"\xff\xd9", max(0, len(data) - 64)) != -1


def jpeg_size(data) -> tuple | None:
    """(width, height) from the JPEG's start-of-frame header, or None when the markers before
    it are malformed or there is no frame header before the scan data."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:          # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (_SOS, _EOI):
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 9 > n or length < 7:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return width, height
        i += 2 + length
    return None


def crop_problem(data, size: int) -> str | None:
    """Why `data` cannot be a size x size crop (a short reason), or None if it may be one."""
    if not looks_like_jpeg(data):
        return "not a complete JPEG"
    found = jpeg_size(data)
    if found is None:
        return "no JPEG frame header"
    if found != (size, size):
        return f"crop is {found[0]}x{found[1]} px, the shard's crop size is {size}x{size}"
    return None
