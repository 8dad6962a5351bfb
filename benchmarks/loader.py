"""Shard loader vs a folder loader in the reference lab's style, side by side on the same sequences.

    python benchmarks/loader.py [--sequences 1000] [--rounds 3] [--workdir /tmp/cvae-loader-bench]

Generates N pushing-world sequences in the BAIR folder layout (once; reused from --workdir), converts them to
shards with the png (default) and npy encodings, then alternates rounds of: the reference-style folder loader
(a torch Dataset opening each frame with PIL + ToTensor and parsing the csv files, DataLoader with one
worker), and the toolkit's shard loaders (training stream and evaluation stream, one worker). Every loader
reads all 30 frames + cond of every sequence in batches of 12; the page cache is warm for all of them after the
first round. Prints sequences/s (median over rounds), the shard/folder ratio, and bytes on disk.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from toolkit.data.sources.folders import list_sequence_dirs
from toolkit.data.loader import eval_loader, train_loader
from toolkit.data.shards.convert import convert
from toolkit.data.worlds.synth import generate_dataset

BATCH = 12


class ReferenceFolderDataset(Dataset):
    """The lab's bair_robot_pushing_dataset access pattern: PIL per frame + ToTensor, csv module per file."""

    def __init__(self, split_dir: Path, seq_len: int = 30):
        from torchvision import transforms  # imported here, not at module level: see the note in main()

        self.dirs = [str(d) for d in list_sequence_dirs(split_dir)]
        self.seq_len = seq_len
        self.transform = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.dirs)

    def _csv(self, path: str) -> torch.Tensor:
        with open(path, newline="") as f:
            rows = [torch.tensor([float(v) for v in row]) for i, row in enumerate(csv.reader(f)) if i < self.seq_len]
        return torch.stack(rows)

    def __getitem__(self, index: int):
        d = self.dirs[index]
        frames = torch.stack([self.transform(Image.open(f"{d}/{t}.png")) for t in range(self.seq_len)])
        cond = torch.cat([self._csv(f"{d}/actions.csv"), self._csv(f"{d}/endeffector_positions.csv")], 1)
        return frames, cond


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed(make_loader, n: int) -> float:
    """Sequences per second for one full pass (loader construction and worker start included)."""
    start, seen = time.perf_counter(), 0
    for batch in make_loader():
        frames = batch[0]
        assert frames.shape[1:] == (30, 3, 64, 64) and frames.dtype == torch.float32
        seen += frames.shape[0]
    assert seen >= n - BATCH, seen
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequences", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/cvae-loader-bench")
    args = p.parse_args()
    # The shard loader starts its workers from a forkserver, and each worker re-imports this __main__ module
    # (CPython 3.11's forkserver never preloads __main__), so heavy module-level imports here (torchvision: 1.3 s)
    # would be paid at every loader start. `cvae`'s own entry point is light in the same way.
    torch.set_num_threads(1)
    work = Path(args.workdir)
    folders = work / f"folders-{args.sequences}"
    if not folders.exists():
        generate_dataset(folders, "pushing", {"train": args.sequences, "validate": 0, "test": 0}, seed=0)
    shards = {}
    for encoding in ("png", "npy"):
        shards[encoding] = work / f"shards-{args.sequences}-{encoding}"
        if not shards[encoding].exists():
            convert(folders, shards[encoding], maxcount=100, encoding=encoding, progress=False)
    n = args.sequences
    loaders = {
        "folders (PIL + ToTensor)": lambda: DataLoader(ReferenceFolderDataset(folders / "train"), batch_size=BATCH,
                                                       shuffle=True, num_workers=1),
        "shards png, train stream": lambda: train_loader(str(shards["png"]), "train", BATCH, n // BATCH, 30, seed=0,
                                                         epoch=0, num_workers=1),
        "shards png, eval stream": lambda: eval_loader(str(shards["png"]), "train", BATCH, 30, num_workers=1),
        "shards npy, train stream": lambda: train_loader(str(shards["npy"]), "train", BATCH, n // BATCH, 30, seed=0,
                                                         epoch=0, num_workers=1),
    }
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for r in range(args.rounds):
        for name, make in loaders.items():
            rates[name].append(timed(make, n))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()), flush=True)
    base = statistics.median(rates["folders (PIL + ToTensor)"])
    folder_bytes = dir_bytes(folders / "train")
    print(f"\n{n} sequences x 30 frames, batch {BATCH}, 1 worker, {args.rounds} rounds (median), cpu_count "
          f"{os.cpu_count()}")
    print(f"{'loader':28s} {'seq/s':>8s} {'vs folders':>11s}")
    for name, values in rates.items():
        print(f"{name:28s} {statistics.median(values):8.0f} {statistics.median(values) / base:10.2f}x")
    print(f"\n{'bytes on disk':28s} {'MB':>8s} {'vs folders':>11s}")
    print(f"{'folders (PNG + csv)':28s} {folder_bytes / 1e6:8.1f} {1.0:10.2f}x")
    for encoding, path in shards.items():
        b = dir_bytes(path)
        print(f"{'shards ' + encoding:28s} {b / 1e6:8.1f} {b / folder_bytes:10.2f}x")


if __name__ == "__main__":
    main()
