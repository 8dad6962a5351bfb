"""Encoded samples of one split into numbered WebDataset shards, with the checks a whole split needs.

Shards are `{split}-NNNNNN.tar` of at most `maxcount` samples each, reproducible (fixed mtime, user and group: the
same samples give byte-identical tars). The split's samples must have unique keys and the dataset's sequences one
shape (frame count, frame size, cond dim: the first sequence sets it).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Iterable

from webdataset import TarWriter

from toolkit.data.shards.pipeline import Encoded
from toolkit.errors import DataError
from toolkit.fsutil import file_sha256

SHAPE_NAMES = ("seq_len", "frame_shape", "cond_dim")


class SplitWriter:
    """Writes one split's samples into numbered shards of at most `maxcount` sequences."""

    def __init__(self, out: Path, split: str, maxcount: int):
        self.out, self.split, self.maxcount = out, split, maxcount
        self.shards: list[dict] = []
        self.writer: TarWriter | None = None
        self.stream = None

    def write(self, sample: dict) -> None:
        if self.writer is None or self.shards[-1]["count"] == self.maxcount:
            self.close()
            name = f"{self.split}-{len(self.shards):06d}.tar"
            self.stream = open(self.out / name, "wb")
            # mtime 0 (an int: a float adds a PAX header per member) makes shards reproducible
            self.writer = TarWriter(self.stream, encoder=False, mtime=0, user="cvae", group="cvae")
            self.shards.append({"name": name, "count": 0})
        self.writer.write(sample)
        self.shards[-1]["count"] += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.stream.close()
            path = self.out / self.shards[-1]["name"]
            self.shards[-1].update(bytes=path.stat().st_size, sha256=file_sha256(path))
            self.writer = None


def write_split(out: Path, split: str, samples: Iterable[Encoded], maxcount: int, shape: dict, hold_back: int,
                where: str) -> tuple[dict, list[dict]]:
    """Shard one split; returns its manifest entry and, with `hold_back` N, the last N samples, which are not
    written (they become the validation split). `shape` is shared by the splits of a dataset."""
    writer, origins, held = SplitWriter(out, split, maxcount), {}, collections.deque()
    try:
        for enc in samples:
            check_shape(enc, shape)
            if enc.key in origins:
                raise DataError(f"{enc.source}: sequence key '{enc.key}' in split '{split}' is also the "
                                f"key of {origins[enc.key]} (rename one of them)")
            origins[enc.key] = enc.source
            held.append(enc.sample)
            if len(held) > hold_back:
                writer.write(held.popleft())
    finally:
        writer.close()
    if not origins:
        raise DataError(f"{where}: no sequences found")
    if len(origins) <= hold_back:
        raise DataError(f"{where}: {len(origins)} sequence(s), none left for training after --val-from-train "
                        f"{hold_back}")
    return {"count": len(origins) - hold_back, "shards": writer.shards}, list(held)


def write_held(out: Path, samples: list[dict], maxcount: int) -> dict:
    """The carved-out validation split from already encoded samples."""
    writer = SplitWriter(out, "validate", maxcount)
    try:
        for sample in samples:
            writer.write(sample)
    finally:
        writer.close()
    return {"count": len(samples), "shards": writer.shards}


def check_shape(enc: Encoded, shape: dict) -> None:
    """All sequences of a dataset must share frame count/size and cond dim; the first one sets them."""
    this = dict(zip(SHAPE_NAMES, enc.shape))
    if not shape:
        shape.update(this)
        return
    for k, v in this.items():
        if shape[k] != v:
            raise DataError(f"{enc.source}: {k} is {v}, but earlier sequences have {shape[k]}")
