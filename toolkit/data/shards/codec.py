"""How one sequence is stored inside a WebDataset shard, and decoded again.

A sample is `{key}.frames.png` (or `{key}.frames.npy`) plus `{key}.cond.npy`:
- `png` (default): all T frames stacked vertically into one lossless RGB PNG of size W x (T*H), every row with
  PNG filter type 0 (None), written and read by `png.py`: a window of frames inflates only as far as its last
  frame. On the pushing world the strips come out 22% smaller and decode 2.5x faster than Pillow-encoded ones
  (which still decode, through Pillow).
- `npy`: the raw uint8 array [T, H, W, 3] (fastest to decode, largest).
- `cond.npy`: float32 [T, D] (D = 7: action then end-effector position; D = 0 for unconditional data).
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import torch

from toolkit.data.sequence import Sequence
from toolkit.data.shards import png

ENCODINGS = ("png", "npy")
COND_ENTRY = "cond.npy"


def frames_entry(encoding: str) -> str:
    return f"frames.{encoding}"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_sample(seq: Sequence, encoding: str) -> dict:
    """Sequence -> WebDataset sample dict of bytes (deterministic: same sequence, same bytes)."""
    frames = np.ascontiguousarray(seq.frames, dtype=np.uint8)
    t, h, w, c = frames.shape
    if encoding == "png":
        data = png.png_bytes(frames.reshape(t * h, w, c))
    elif encoding == "npy":
        data = npy_bytes(frames)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return {"__key__": seq.key, frames_entry(encoding): data, COND_ENTRY: npy_bytes(seq.cond.astype(np.float32))}


def decode_frames(data: bytes, encoding: str, seq_len: int, start: int = 0, count: int | None = None) -> torch.Tensor:
    """Frames start .. start+count-1 (default: all) of a stored sequence -> uint8 tensor [count, 3, H, W].
    Raises ValueError if the bytes do not hold seq_len frames (or are corrupt). PNG strips are inflated only as
    far as the last frame asked for (`png.decode_frames`)."""
    count = seq_len - start if count is None else count
    if not (0 <= start and 1 <= count and start + count <= seq_len):
        raise ValueError(f"frames {start}..{start + count - 1} are outside a sequence of {seq_len}")
    if encoding == "png":
        return torch.from_numpy(png.decode_frames(data, seq_len, start, count)).permute(0, 3, 1, 2)
    if encoding == "npy":
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[0] != seq_len or array.shape[3] != 3:
            raise ValueError(f"frames array is {array.dtype} {array.shape}, expected uint8 [{seq_len}, H, W, 3]")
        return torch.from_numpy(array[start:start + count].copy()).permute(0, 3, 1, 2)
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
