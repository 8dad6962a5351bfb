"""`cvae shards convert`: pack source sequences into WebDataset tar shards plus a manifest.

Output: `OUT/{split}-NNNNNN.tar` (at most `maxcount` sequences each) and `OUT/manifest.json` (splits, shard
names, sequence counts, frame shape, cond dims, encoding, sizes and sha256 checksums). Everything is built in
a temporary sibling directory and renamed onto OUT at the end, so a bad input or a kill leaves no partial
shards or manifest. Shards are reproducible: the same sources give byte-identical tars (fixed mtime), with any
number of workers, and BAIR's tar gives the shards of its extracted folder.

Sources (`inputs.FORMATS`): BAIR processed_data folders, the original TFRecords (a folder, or BAIR's tar read
as a stream from a file, an http(s) URL or stdin) and LeRobot v3 datasets. `workers` N > 1 reads and encodes
the sequences in N processes (`pipeline.py`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from toolkit import __version__
from toolkit.data.sequence import COND_FIELDS
from toolkit.data.shards import codec, manifest
from toolkit.data.shards.inputs import FORMATS, Source, open_source
from toolkit.data.shards.pipeline import Encoded, encode_all, worker_pool
from toolkit.data.shards.reorder import MemberSpill
from toolkit.data.shards.writer import write_held, write_split
from toolkit.data.sources.lerobot import LeRobotOptions
from toolkit.errors import DataError, ToolkitError
from toolkit.fsutil import atomic_dir

SPILL_DIR, HANDOFF_DIR = ".members", ".handoff"
"""Inside the temporary output directory: a tar's members before they are put in order (`reorder.py`), and
records on their way to a worker (`pipeline.Handoff`)."""


def _check_arguments(src: str, out: Path, fmt: str, maxcount: int, encoding: str, overwrite: bool,
                     val_from_train: int, workers: int, lerobot: LeRobotOptions | None) -> None:
    if fmt not in FORMATS:
        raise ToolkitError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if encoding not in codec.ENCODINGS:
        raise ToolkitError(f"--encoding must be one of {', '.join(codec.ENCODINGS)}, got {encoding!r}")
    if maxcount < 1 or val_from_train < 0 or workers < 1:
        raise ToolkitError(f"--maxcount and --workers must be >= 1 and --val-from-train >= 0, got {maxcount}, "
                           f"{workers} and {val_from_train}")
    if lerobot is not None and fmt != "lerobot":
        raise ToolkitError(f"--camera, --action-key, --state-key, --seq-len, --stride and --resize are options of "
                           f"--format lerobot, not of {fmt}")
    if out.exists() and not overwrite:
        raise ToolkitError(f"{out} exists; pass --overwrite to replace it")


def _counted(stream: Iterator[tuple], bar: tqdm, unit: str) -> Iterator[tuple]:
    """(tag, units, Encoded) -> (tag, Encoded), advancing the bar; a bar in bytes also shows the sequence count."""
    for count, (tag, units, enc) in enumerate(stream, start=1):
        bar.update(units)
        if unit == "B":
            bar.set_postfix_str(f"{count} seq", refresh=False)
        yield tag, enc


def _ordered_splits(source: Source, encoding: str, pool, workers: int, bars: list[tqdm], tmp: Path) -> dict:
    """Split -> iterator of Encoded in source order; a stream (a tar) is read whole first and put in order, with
    a second progress bar (appended to `bars`) for writing its shards."""
    bar, scratch = bars[0], tmp / HANDOFF_DIR
    scratch.mkdir()
    if source.stream is None:
        def split_stream(split: str) -> Iterator[Encoded]:
            items = ((None, job, units) for job, units in source.splits[split]())
            return (enc for _, enc in _counted(encode_all(items, encoding, pool, workers, scratch), bar, source.unit))
        return {split: split_stream(split) for split in source.splits}
    spill = MemberSpill(tmp / SPILL_DIR)
    items = (((split, member), job, units) for split, member, job, units in source.stream())
    for (split, member), enc in _counted(encode_all(items, encoding, pool, workers, scratch), bar, source.unit):
        spill.add(split, member, enc)
    if bar.total:
        bar.update(bar.total - bar.n)  # the tar's own headers and padding
    disable = bar.disable
    bar.close()
    bars.append(tqdm(desc="writing shards", total=spill.count(), unit="seq", disable=disable, dynamic_ncols=True))

    def ticking(samples: Iterator[Encoded]) -> Iterator[Encoded]:
        for enc in samples:
            bars[-1].update(1)
            yield enc
    return {split: ticking(samples) for split, samples in spill.splits().items()}


def convert(src: str | Path, out: str | Path, fmt: str = "folders", maxcount: int = 256, encoding: str = "png",
            overwrite: bool = False, progress: bool = True, val_from_train: int = 0, workers: int = 1,
            lerobot: LeRobotOptions | None = None) -> dict:
    """Convert every split under `src` into shards under `out`; returns the manifest dict.

    `val_from_train` N > 0 writes the last N sequences of `train` (in source order: deterministic) as the
    split `validate`, for sources that have none (the original BAIR TFRecords have only train and test).
    """
    src, out = (str(src) if "://" in str(src) else str(Path(src))), Path(out)
    _check_arguments(src, out, fmt, maxcount, encoding, overwrite, val_from_train, workers, lerobot)
    source = open_source(src, fmt, lerobot)
    shape, splits = {}, {}
    bars = [tqdm(desc="converting", total=source.total, unit=source.unit, unit_scale=source.unit == "B",
                 disable=not progress, dynamic_ncols=True)]
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [b.close() for b in bars])
        tmp = stack.enter_context(atomic_dir(out, overwrite=overwrite))
        pool = stack.enter_context(worker_pool(workers))
        streams = _ordered_splits(source, encoding, pool, workers, bars, tmp)
        if val_from_train and ("train" not in streams or "validate" in streams):
            raise DataError(f"{src}: --val-from-train needs a 'train' split and no 'validate' split (has: "
                            f"{', '.join(streams)})")
        for split, samples in streams.items():
            hold_back = val_from_train if split == "train" else 0
            where = source.where.format(src=src.rstrip("/"), split=split)
            splits[split], held = write_split(tmp, split, samples, maxcount, shape, hold_back, where)
            if held:
                splits["validate"] = write_held(tmp, held, maxcount)
        for name in (SPILL_DIR, HANDOFF_DIR):
            shutil.rmtree(tmp / name, ignore_errors=True)
        data = _manifest(src, fmt, val_from_train, encoding, shape, splits, source)
        (tmp / manifest.MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n")
    if progress:
        for split, entry in splits.items():
            print(f"{split}: {entry['count']} sequences in {len(entry['shards'])} shard(s)")
        print(f"wrote {out / manifest.MANIFEST_NAME}")
    return data


def _manifest(src: str, fmt: str, val_from_train: int, encoding: str, shape: dict, splits: dict,
              source: Source) -> dict:
    return {
        "format": manifest.FORMAT, "version": manifest.VERSION, "created_by": f"toolkit {__version__}",
        "source": {"path": src, "format": fmt, "val_from_train": val_from_train, **source.info},
        "encoding": encoding, "seq_len": shape["seq_len"], "frame_shape": list(shape["frame_shape"]),
        "cond_dim": shape["cond_dim"], "cond_fields": (source.cond_fields or [list(f) for f in COND_FIELDS])
        if shape["cond_dim"] else [],
        **source.extra, "splits": splits,
    }
