"""PNG strips: all frames of a sequence stacked vertically in one lossless 8-bit RGB PNG, every row stored with
filter type 0 (None), and a decoder that inflates only the rows a window needs.

With filter 0 a row's bytes are its pixels, so frame t is rows t*H .. (t+1)*H-1 of the inflated stream and the
first `start + count` frames come out of a zlib stream stopped early: a 12-frame window of a 30-frame strip
costs 12/30 of a full decode (plus the frames before a random window's start). Deflate's 32 KiB window spans
the same row of the previous frame (12 KiB back), so the static background of a fixed camera compresses across
time; filter 0 keeps those repeats byte-identical (Pillow's adaptive filters break them). A PNG written by
another encoder (other filters, interlacing, several IDAT chunks are fine) is decoded in full by Pillow.
Chunk CRCs are checked, so corrupt data raises ValueError rather than giving wrong pixels.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(image: np.ndarray, level: int = 6) -> bytes:
    """A standard 8-bit RGB PNG of image uint8 [H, W, 3] whose rows all use filter type 0."""
    h, w, c = image.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * c)], axis=1)  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, filter 0, no interlace
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + \
        _chunk(b"IEND", b"")


def _chunks(data: bytes) -> tuple[bytes, bytes]:
    """(IHDR payload, concatenated IDAT payloads), every chunk's CRC checked."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG (bad signature)")
    pos, header, idat = len(SIGNATURE), b"", []
    while pos + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        name = tag.decode("latin-1")
        if end + 4 > len(data):
            raise ValueError(f"corrupt PNG (its {name} chunk is truncated)")
        body = data[pos + 8:end]
        if zlib.crc32(tag + body) != struct.unpack(">I", data[end:end + 4])[0]:
            raise ValueError(f"corrupt PNG (bad CRC in its {name} chunk)")
        if tag == b"IHDR":
            header = body
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
        pos = end + 4
    if len(header) != 13 or not idat:
        raise ValueError("corrupt PNG (no IHDR or IDAT)")
    return header, b"".join(idat)


def _pillow_rows(data: bytes) -> np.ndarray:
    """The whole image through Pillow: uint8 [rows, W, 3]."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "PNG" or img.mode != "RGB":
                raise ValueError(f"expected an RGB PNG, got {img.format} {img.mode}")
            return np.array(img)
    except OSError as e:  # Pillow's errors for corrupt/truncated data are OSError subclasses
        raise ValueError(f"corrupt PNG ({e})") from None


def decode_frames(data: bytes, frames: int, start: int, count: int) -> np.ndarray:
    """Frames start .. start+count-1 of a strip of `frames` frames: uint8 [count, H, W, 3]. Inflates only up to
    the last row asked for when every row it inflates has filter type 0, else decodes it all with Pillow."""
    header, stream = _chunks(data)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if height % frames:
        raise ValueError(f"PNG strip of height {height} does not hold {frames} frames")
    h = height // frames
    if (depth, colour, interlace) == (8, 2, 0):
        stride, end = 1 + width * 3, (start + count) * h
        try:
            raw = zlib.decompressobj().decompress(stream, end * stride)
        except zlib.error as e:
            raise ValueError(f"corrupt PNG ({e})") from None
        if len(raw) < end * stride:
            raise ValueError(f"truncated PNG data ({len(raw)} of {end * stride} bytes)")
        rows = np.frombuffer(raw, np.uint8).reshape(end, stride)
        if not rows[:, 0].any():  # filter type 0 everywhere: the bytes are the pixels
            return rows[start * h:, 1:].reshape(count, h, width, 3).copy()
    image = _pillow_rows(data)
    return image[start * h:(start + count) * h].reshape(count, h, width, 3).copy()
