"""Shared fixtures: tiny datasets in the BAIR processed_data layout, written by the tests themselves."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from toolkit.data.folders import sequence_dir, write_sequence_dir
from toolkit.data.sequence import safe_key

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def random_sequence(rng: np.random.Generator, seq_len: int = 30, cond: bool = True):
    """Blocky random frames (compress and write fast, still every pixel matters) + random actions/positions."""
    blocks = rng.integers(0, 256, size=(seq_len, 8, 8, 3), dtype=np.uint8)
    frames = blocks.repeat(8, axis=1).repeat(8, axis=2)
    frames[:, ::7, ::5] = rng.integers(0, 256, size=frames[:, ::7, ::5].shape, dtype=np.uint8)
    if not cond:
        return frames, None, None
    actions = rng.normal(size=(seq_len, 4)).astype(np.float32)
    positions = rng.uniform(-1, 1, size=(seq_len, 3)).astype(np.float32)
    return frames, actions, positions


def write_bair_folders(root: Path, counts: dict[str, int], cond: bool = True, seed: int = 0) -> dict[str, dict]:
    """Write random sequences; returns {split: {key: (frames, cond [T,D] float32)}} with the loader's keys."""
    rng = np.random.default_rng(seed)
    expected: dict[str, dict] = {}
    for split, n in counts.items():
        expected[split] = {}
        for i in range(n):
            frames, actions, positions = random_sequence(rng, cond=cond)
            path = sequence_dir(root / split, i)
            write_sequence_dir(path, frames, actions, positions)
            c = np.concatenate([actions, positions], 1) if cond else np.zeros((30, 0), np.float32)
            expected[split][safe_key(path.parent.name, path.name)] = (frames, c)
    return expected


def png_offset(shard: Path, index: int = 0) -> int:
    """Byte offset of the `index`-th sample's frames.png data inside a shard."""
    with tarfile.open(shard) as tar:
        members = [m for m in tar if m.name.endswith(".frames.png")]
    return members[index].offset_data


@pytest.fixture
def bair_folders(tmp_path: Path):
    root = tmp_path / "processed_data"
    expected = write_bair_folders(root, {"train": 5, "validate": 3, "test": 2})
    return root, expected
