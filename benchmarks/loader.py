"""The shard loader on 12-frame windows: before/after the window decoder, the zlib limit, npy, a folder loader.

    python benchmarks/loader.py [--sequences 1000] [--rounds 5] [--workdir /tmp/cvae-loader-bench]

Generates N pushing-world sequences in the BAIR folder layout (once; reused from --workdir) and converts them to
shards (png and npy encodings). Each round then reads every loader once, one worker each, batches of 12
sequences x 12 frames (the lab's window) + cond; a warm-up round comes first (page cache, worker start-up) and
the median over `--rounds` rounds is printed:
- png, window decoder: the toolkit's training stream (`train_loader`), inflating each strip only up to frame 12
  and yielding uint8 frames; and the same with the float conversion the trainer's `Batch.to` does on a CPU;
- png, full decode (before): the same stream decoding whole strips with Pillow, slicing 12 frames and converting
  to float in the main process, as the loader did before;
- zlib alone: inflating the same 12 frames' bytes of every strip in one process (the IDAT payloads extracted
  beforehand), the limit of any png stream;
- npy: the training stream on raw arrays; folders: the lab's Dataset (PIL + ToTensor per frame, csv module).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import os
import statistics
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from toolkit.data import loader
from toolkit.data.loader import train_loader
from toolkit.data.shards import codec
from toolkit.data.shards.convert import convert
from toolkit.data.shards.manifest import read_manifest
from toolkit.data.shards.png import _chunks
from toolkit.data.sources.folders import list_sequence_dirs
from toolkit.data.worlds.synth import generate_dataset

BATCH, WINDOW = 12, 12


class ReferenceFolderDataset(Dataset):
    """The lab's bair_robot_pushing_dataset access pattern: PIL per frame + ToTensor, csv module per file."""

    def __init__(self, split_dir: Path, seq_len: int = WINDOW):
        from torchvision import transforms  # imported here: loader workers re-import this module (see main)

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


def _pillow_decode(src, seq_len: int):
    """The decoder before: the whole strip through Pillow, then the window."""
    for sample in src:
        with Image.open(io.BytesIO(sample["frames.png"])) as img:
            strip = np.array(img)
        frames = torch.from_numpy(strip).view(seq_len, -1, strip.shape[1], 3).permute(0, 3, 1, 2)[:WINDOW]
        yield frames, codec.decode_cond(sample["cond.npy"])[:WINDOW], sample["__key__"]


def _to_float(batch):
    return batch._replace(frames=batch.frames.float().div_(255.0))


def before_loader(shards: str, n_batches: int):
    """The training stream as it was: full Pillow decode, float frames from the loader."""
    m = read_manifest(shards)
    s = (0, 0, 0)
    pipeline = wds.DataPipeline(
        functools.partial(loader._resampled, m.urls("train"), s), wds.tarfile_to_samples(handler=loader._shard_error),
        functools.partial(loader._shuffled, bufsize=256, seed=s), functools.partial(_pillow_decode, seq_len=m.seq_len),
        wds.batched(BATCH, collation_fn=loader._collate, partial=False))
    return loader._loader(pipeline, 1).map(_to_float).with_epoch(n_batches)


def stream_rate(make, n: int, to_float: bool = False) -> float:
    """Sequences per second for one pass (loader construction and worker start included)."""
    start, seen = time.perf_counter(), 0
    for batch in make():
        frames = batch[0]
        if to_float:
            frames = frames.float().div_(255.0)
        assert frames.shape[1:] == (WINDOW, 3, 64, 64), frames.shape
        seen += frames.shape[0]
    assert seen >= n - BATCH, seen
    return seen / (time.perf_counter() - start)


def idat_payloads(shards: Path) -> list[bytes]:
    """The compressed pixel data (IDAT) of every training strip."""
    payloads = []
    for tar_path in sorted(shards.glob("train-*.tar")):
        with tarfile.open(tar_path) as tar:
            payloads += [_chunks(tar.extractfile(m).read())[1] for m in tar if m.name.endswith(".frames.png")]
    return payloads


def inflate_rate(payloads: list[bytes], row_bytes: int) -> float:
    """Sequences per second inflating the first WINDOW frames of each strip with zlib alone."""
    need = WINDOW * 64 * row_bytes
    start = time.perf_counter()
    for data in payloads:
        zlib.decompressobj().decompress(data, need)
    return len(payloads) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequences", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workdir", default="/tmp/cvae-loader-bench")
    args = p.parse_args()
    # Loader workers start from a forkserver and re-import this __main__ module (CPython 3.11's forkserver never
    # preloads __main__), so heavy module-level imports here (torchvision: 1.3 s) would be paid at every start.
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
    n, payloads = args.sequences, idat_payloads(shards["png"])
    png, npy = str(shards["png"]), str(shards["npy"])
    streams = {
        "png, window decoder": (lambda: train_loader(png, "train", BATCH, n // BATCH, WINDOW, seed=0, epoch=0,
                                                     num_workers=1), False),
        "  + float on the CPU": (lambda: train_loader(png, "train", BATCH, n // BATCH, WINDOW, seed=0, epoch=0,
                                                      num_workers=1), True),
        "png, full decode (before)": (lambda: before_loader(png, n // BATCH), False),
        "npy, window": (lambda: train_loader(npy, "train", BATCH, n // BATCH, WINDOW, seed=0, epoch=0,
                                             num_workers=1), False),
        "folders (PIL + ToTensor)": (lambda: DataLoader(ReferenceFolderDataset(folders / "train"), batch_size=BATCH,
                                                        shuffle=True, num_workers=1), False),
    }
    rates: dict[str, list[float]] = {name: [] for name in [*streams, "zlib alone (same bytes)"]}
    for r in range(args.rounds + 1):  # round 0 warms up and is not counted
        measured = {name: stream_rate(make, n, to_float) for name, (make, to_float) in streams.items()}
        measured["zlib alone (same bytes)"] = inflate_rate(payloads, 1 + 64 * 3)
        if r:
            for name, rate in measured.items():
                rates[name].append(rate)
            print(f"round {r}/{args.rounds}: " + ", ".join(f"{k.strip()} {v[-1]:.0f}/s" for k, v in rates.items()),
                  flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    before, limit = median["png, full decode (before)"], median["zlib alone (same bytes)"]
    print(f"\n{n} sequences, {WINDOW}-frame windows of 30, batch {BATCH}, 1 worker, median of {args.rounds} rounds "
          f"after a warm-up round, cpu_count {os.cpu_count()}")
    print(f"{'loader':28s} {'seq/s':>8s} {'vs before':>10s} {'zlib limit / it':>16s}")
    for name, value in median.items():
        print(f"{name:28s} {value:8.0f} {value / before:9.2f}x {limit / value:15.2f}x")


if __name__ == "__main__":
    main()
