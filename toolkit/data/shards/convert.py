"""`cvae shards convert|verify`: pack source sequences into WebDataset tar shards, and check them.

Output: `OUT/{split}-NNNNNN.tar` (at most `maxcount` sequences each) and `OUT/manifest.json` (splits, shard
names, sequence counts, frame shape, cond dims, encoding, sizes and sha256 checksums). Everything is built in
a temporary sibling directory and renamed onto OUT at the end, so a bad input or a kill leaves no partial
shards or manifest. Shards are reproducible: the same sources give byte-identical tars (fixed mtime).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm
from webdataset import TarWriter

from toolkit import __version__
from toolkit.data.shards import codec, manifest
from toolkit.data.sources import folders, tfrecord
from toolkit.data.sequence import COND_FIELDS, Sequence
from toolkit.errors import DataError, ToolkitError
from toolkit.fsutil import atomic_dir, file_sha256

FORMATS = ("folders", "tfrecord")


def _source_splits(src: Path, fmt: str) -> dict[str, Callable[[], Iterator[Sequence]]]:
    """Split name -> function iterating its sequences, for the folder layout or TFRecord directories."""
    if fmt == "folders":
        return {s: (lambda s=s: folders.iter_folder_split(src / s)) for s in folders.find_splits(src)}
    splits = [s for s in folders.find_splits(src) if any((src / s).glob("*.tfrecord*"))]
    if not splits:
        raise DataError(f"{src}: no split folder with *.tfrecord(s) files (expected e.g. "
                        f"{src}/train/traj_0_to_255.tfrecords)")
    return {s: (lambda s=s: tfrecord.iter_tfrecord_split(src / s)) for s in splits}


class _SplitWriter:
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


def _check_arguments(src: Path, out: Path, fmt: str, maxcount: int, encoding: str, overwrite: bool,
                     val_from_train: int) -> None:
    if fmt not in FORMATS:
        raise ToolkitError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if encoding not in codec.ENCODINGS:
        raise ToolkitError(f"--encoding must be one of {', '.join(codec.ENCODINGS)}, got {encoding!r}")
    if maxcount < 1 or val_from_train < 0:
        raise ToolkitError(f"--maxcount must be >= 1 and --val-from-train >= 0, got {maxcount} and {val_from_train}")
    if not src.is_dir():
        raise DataError(f"{src}: source directory not found")
    if out.exists() and not overwrite:
        raise ToolkitError(f"{out} exists; pass --overwrite to replace it")


def _write_split(tmp: Path, split: str, sequences, maxcount: int, encoding: str, shape: dict, bar,
                 hold_back: int, where: Path) -> tuple[dict, list[dict]]:
    """Shard one split; returns its manifest entry and, with `hold_back` N, the encoded last N sequences, which
    are not written (they become the validation split)."""
    writer, origins, held = _SplitWriter(tmp, split, maxcount), {}, collections.deque()
    try:
        for seq in sequences:
            _check_consistent(seq, shape)
            if seq.key in origins:
                raise DataError(f"{seq.source}: sequence key '{seq.key}' in split '{split}' is also the "
                                f"key of {origins[seq.key]} (rename one of them)")
            origins[seq.key] = seq.source
            held.append(codec.encode_sample(seq, encoding))
            if len(held) > hold_back:
                writer.write(held.popleft())
            bar.update(1)
    finally:
        writer.close()
    if not origins:
        raise DataError(f"{where}: no sequences found")
    if len(origins) <= hold_back:
        raise DataError(f"{where}: {len(origins)} sequence(s), none left for training after --val-from-train "
                        f"{hold_back}")
    return {"count": len(origins) - hold_back, "shards": writer.shards}, list(held)


def convert(src: str | Path, out: str | Path, fmt: str = "folders", maxcount: int = 256, encoding: str = "png",
            overwrite: bool = False, progress: bool = True, val_from_train: int = 0) -> dict:
    """Convert every split under `src` into shards under `out`; returns the manifest dict.

    `val_from_train` N > 0 writes the last N sequences of `train` (in source order: deterministic) as the
    split `validate`, for sources that have none (the original BAIR TFRecords have only train and test).
    """
    src, out = Path(src), Path(out)
    _check_arguments(src, out, fmt, maxcount, encoding, overwrite, val_from_train)
    sources = _source_splits(src, fmt)
    if val_from_train and ("train" not in sources or "validate" in sources):
        raise DataError(f"{src}: --val-from-train needs a 'train' split and no 'validate' split (has: "
                        f"{', '.join(sources)})")
    shape, splits = {}, {}
    bar = tqdm(desc="converting", unit="seq", disable=not progress)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for split, iterate in sources.items():
            hold_back = val_from_train if split == "train" else 0
            splits[split], held = _write_split(tmp, split, iterate(), maxcount, encoding, shape, bar, hold_back,
                                               where=src / split)
            if held:
                splits["validate"] = _write_held(tmp, held, maxcount)
        bar.close()
        data = {
            "format": manifest.FORMAT, "version": manifest.VERSION, "created_by": f"toolkit {__version__}",
            "source": {"path": str(src), "format": fmt, "val_from_train": val_from_train}, "encoding": encoding,
            "seq_len": shape["seq_len"], "frame_shape": list(shape["frame_shape"]), "cond_dim": shape["cond_dim"],
            "cond_fields": [list(f) for f in COND_FIELDS] if shape["cond_dim"] else [], "splits": splits,
        }
        (tmp / manifest.MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n")
    if progress:
        for split, entry in splits.items():
            print(f"{split}: {entry['count']} sequences in {len(entry['shards'])} shard(s)")
        print(f"wrote {out / manifest.MANIFEST_NAME}")
    return data


def _write_held(tmp: Path, samples: list[dict], maxcount: int) -> dict:
    """The carved-out validation split from already encoded samples."""
    writer = _SplitWriter(tmp, "validate", maxcount)
    try:
        for sample in samples:
            writer.write(sample)
    finally:
        writer.close()
    return {"count": len(samples), "shards": writer.shards}


def _check_consistent(seq: Sequence, shape: dict) -> None:
    """All sequences of a dataset must share frame count/size and cond dim; the first one sets them."""
    this = {"seq_len": int(seq.frames.shape[0]), "frame_shape": tuple(int(d) for d in seq.frames.shape[1:]),
            "cond_dim": int(seq.cond.shape[1])}
    if not shape:
        shape.update(this)
        return
    for k, v in this.items():
        if shape[k] != v:
            raise DataError(f"{seq.source}: {k} is {v}, but earlier sequences have {shape[k]}")

