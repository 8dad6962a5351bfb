"""How one sequence is stored inside a WebDataset shard, and decoded again.

A sample is `{key}.frames.png` (or `{key}.frames.npy`) plus `{key}.cond.npy`:
- `png` (default): all T frames stacked vertically into one lossless RGB PNG of size W x (T*H), every row with
  PNG filter type 0 (None). One decode per sequence instead of T; deflate's 32 KiB window spans the same row
  of the previous frame (12 KiB back), so the static background of a fixed camera compresses across time.
  Filter 0 keeps those repeats byte-identical (adaptive filters, Pillow's default, break them): on the pushing
  world the strips come out 22% smaller and decode 2.5x faster than Pillow-encoded ones. Decoded with Pillow,
  which raises on corrupt data (torchvision 0.29's `decode_png` crashed the process on a PNG with a bad IDAT
  CRC, and its image codecs are deprecated).
- `npy`: the raw uint8 array [T, H, W, 3] (fastest to decode, largest).
- `cond.npy`: float32 [T, D] (D = 7: action then end-effector position; D = 0 for unconditional data).
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

import numpy as np
import torch
from PIL import Image

from toolkit.data.sequence import Sequence

ENCODINGS = ("png", "npy")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COND_ENTRY = "cond.npy"


def frames_entry(encoding: str) -> str:
    return f"frames.{encoding}"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(image: np.ndarray, level: int = 6) -> bytes:
    """A standard 8-bit RGB PNG of image uint8 [H, W, 3] whose rows all use filter type 0 (see above)."""
    h, w, c = image.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * c)], axis=1)  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, filter 0, no interlace
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + \
        _chunk(b"IEND", b"")


def encode_sample(seq: Sequence, encoding: str) -> dict:
    """Sequence -> WebDataset sample dict of bytes (deterministic: same sequence, same bytes)."""
    frames = np.ascontiguousarray(seq.frames, dtype=np.uint8)
    t, h, w, c = frames.shape
    if encoding == "png":
        data = png_bytes(frames.reshape(t * h, w, c))
    elif encoding == "npy":
        data = npy_bytes(frames)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return {"__key__": seq.key, frames_entry(encoding): data, COND_ENTRY: npy_bytes(seq.cond.astype(np.float32))}


def decode_frames(data: bytes, encoding: str, seq_len: int) -> torch.Tensor:
    """Stored frames -> uint8 tensor [T, 3, H, W]. Raises ValueError if the bytes do not hold seq_len frames."""
    if encoding == "png":
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "PNG" or img.mode != "RGB":
                    raise ValueError(f"expected an RGB PNG, got {img.format} {img.mode}")
                strip = np.array(img)  # [T*H, W, 3], decoded and copied into a writable array
        except OSError as e:  # PIL's errors for corrupt/truncated/unidentified data are OSError subclasses
            raise ValueError(f"corrupt PNG ({e})") from None
        th, w, c = strip.shape
        if th % seq_len:
            raise ValueError(f"PNG strip of height {th} does not hold {seq_len} frames")
        return torch.from_numpy(strip).view(seq_len, th // seq_len, w, c).permute(0, 3, 1, 2)
    if encoding == "npy":
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[0] != seq_len or array.shape[3] != 3:
            raise ValueError(f"frames array is {array.dtype} {array.shape}, expected uint8 [{seq_len}, H, W, 3]")
        return torch.from_numpy(array.copy()).permute(0, 3, 1, 2)
    raise ValueError(f"unknown encoding {encoding!r}")


def decode_cond(data: bytes) -> torch.Tensor:
    """Stored conditioning -> float32 tensor [T, D]."""
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype != np.float32 or array.ndim != 2:
        raise ValueError(f"cond array is {array.dtype} {array.shape}, expected float32 [T, D]")
    return torch.from_numpy(array.copy())


def tar_samples(data: bytes) -> dict[str, dict[str, bytes]]:
    """Group tar members into samples by key (the basename up to its first dot, as WebDataset does)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, entry = member.name.partition(".")
            samples.setdefault(key, {})[entry] = tar.extractfile(member).read()
    return samples
