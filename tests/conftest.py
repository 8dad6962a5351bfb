"""Shared fixtures: tiny datasets in the BAIR processed_data layout, written by the tests themselves."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from toolkit.data.sources.folders import sequence_dir, write_sequence_dir
from toolkit.data.sequence import safe_key
from toolkit.launcher import free_port

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


REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"width": 0.125, "g_dim": 16, "z_dim": 4, "rnn_size": 32}


def tiny_recipe(path: Path, shards: str, run_dir: Path, **sections) -> Path:
    """A recipe for a tiny model on tiny shards (a few seconds per epoch on a CPU)."""
    import yaml

    data = {"data": {"shards": shards, "batch_size": 2, "num_workers": 0, "shuffle_buffer": 4},
            "model": dict(TINY_MODEL),
            "train": {"run_dir": str(run_dir), "epochs": 3, "epoch_size": 4, "eval_every": 2,
                      "log_every": 1, "num_gifs": 1, "progress": False, "bn_batches": 2},
            "wandb": {"mode": "disabled"}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    return path


def run_toolkit(*args: str, **kw) -> subprocess.CompletedProcess:
    """`python -m toolkit ARGS` from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600, **kw)


def accelerate_launch(*args: str, config: str = "cpu.yaml") -> list[str]:
    """The command line of `accelerate launch --config_file recipes/accelerate/CONFIG ARGS` on a free port."""
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
            str(REPO / "recipes" / "accelerate" / config), "--main_process_port", str(free_port()), *args]


@pytest.fixture(scope="session")
def pushing_shards(tmp_path_factory) -> str:
    """Shards of a tiny pushing-world dataset: 16 train, 4 validate, 5 test sequences, 4 per shard."""
    from toolkit.data.shards.convert import convert
    from toolkit.data.worlds.synth import generate_dataset

    root = tmp_path_factory.mktemp("pushing")
    generate_dataset(root / "folders", "pushing", {"train": 16, "validate": 4, "test": 5}, seed=0, progress=False)
    convert(root / "folders", root / "shards", maxcount=4, progress=False)
    return str(root / "shards")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, pushing_shards) -> Path:
    """A finished tiny training run (2 epochs x 3 steps, validated twice); read-only for the tests."""
    root = tmp_path_factory.mktemp("tiny_run")
    recipe = tiny_recipe(root / "recipe.yaml", pushing_shards, root / "run",
                         train={"epochs": 2, "epoch_size": 3, "eval_every": 1})
    proc = run_toolkit("train", str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"
