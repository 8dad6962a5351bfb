"""The in-memory record every source reader yields and the shard writer consumes."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SEQ_LEN = 30
"""Frames per BAIR sequence."""
IMAGE_SIZE = 64
"""Frame height and width."""
COND_FIELDS = (("action", 4), ("endeffector_pos", 3))
"""Per-frame conditioning, in order: action (dx, dy, dz, gripper) then end-effector position (x, y, z)."""
COND_DIM = sum(n for _, n in COND_FIELDS)


@dataclass
class Sequence:
    key: str
    """Unique within its split and WebDataset-safe (letters, digits, '_' and '-' only; no '.')."""
    frames: np.ndarray
    """uint8 [T, H, W, 3]."""
    cond: np.ndarray
    """float32 [T, D]: actions then end-effector positions (D = 7), or [T, 0] for unconditional data."""
    source: str
    """Where it came from (folder or `file.tfrecords#record`), for error messages."""


def safe_key(*parts: str | int) -> str:
    """Join path-like parts into a WebDataset key: 'traj_0_to_255', 3 -> 'traj_0_to_255__3'."""
    key = "__".join(str(p) for p in parts)
    return re.sub(r"[^A-Za-z0-9_\-]", "-", key)
