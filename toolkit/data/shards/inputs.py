"""What `cvae shards convert` reads, per `--format`: a source's splits and the jobs that read its sequences.

A `Source` either lists its splits up front, each a function giving `(job, units)` in order (folders, a TFRecord
folder, a LeRobot dataset), or is a `stream` of `(split, member, job, units)` in any member order (a tar, which
`reorder.py` puts back into folder order). `units` advance the progress bar: sequences, or bytes of the input
where the sequence count is not known before the end (TFRecords).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from toolkit.errors import DataError

FORMATS = ("folders", "tfrecord", "lerobot")
"""folders: BAIR processed_data folders; tfrecord: the original TFRecords, a folder of them or BAIR's tar (a file,
an http(s) URL or `-` for stdin); lerobot: a LeRobot v3 dataset directory."""


@dataclass
class Source:
    splits: dict[str, Callable[[], Iterator[tuple]]] = field(default_factory=dict)
    """Split -> function giving (job, units) in order (empty for a stream)."""
    stream: Callable[[], Iterator[tuple]] | None = None
    """Function giving (split, member, job, units), members in any order."""
    total: int | None = None
    """Units in all, for the progress bar's ETA (None: unknown, e.g. stdin)."""
    unit: str = "seq"
    """'seq' or 'B'."""
    where: str = "{src}/{split}"
    """How errors about a whole split name it."""
    cond_fields: list | None = None
    """[name, values] per part of cond, for conditional data (None: BAIR's `sequence.COND_FIELDS`)."""
    info: dict = field(default_factory=dict)
    """Extra entries of the manifest's `source` record."""
    extra: dict = field(default_factory=dict)
    """Extra top-level manifest entries (`fps`)."""


def open_source(src: str, fmt: str, lerobot=None) -> Source:
    """The source at `src` in format `fmt` (one of `FORMATS`; `lerobot`: its `LeRobotOptions`); DataError when it
    is not there or empty. (The readers are imported here: the CLI reads `FORMATS` from this module.)"""
    from toolkit.data.sources import bair_tar, folders, tfrecord

    if fmt == "tfrecord" and bair_tar.is_stream(src):
        stream, size, name = bair_tar.open_location(src)
        return Source(stream=partial(bair_tar.tar_jobs, stream, name), total=size, unit="B",
                      where="{src} split '{split}'")
    root = Path(src)
    if not root.is_dir():
        raise DataError(f"{src}: source directory not found")
    if fmt == "folders":
        splits = folders.find_splits(root)
        total = sum(len(folders.list_sequence_dirs(root / s)) for s in splits)
        return Source(splits={s: partial(folders.folder_jobs, root / s) for s in splits}, total=total)
    if fmt == "tfrecord":
        splits = [s for s in folders.find_splits(root) if any((root / s).glob("*.tfrecord*"))]
        if not splits:
            raise DataError(f"{root}: no split folder with *.tfrecord(s) files (expected e.g. "
                            f"{root}/train/traj_0_to_255.tfrecords)")
        total = sum(p.stat().st_size for s in splits for p in tfrecord.list_tfrecord_files(root / s))
        return Source(splits={s: partial(tfrecord.tfrecord_jobs, root / s) for s in splits}, total=total, unit="B")
    return _lerobot(root, lerobot)


def _lerobot(root: Path, options) -> Source:
    from toolkit.data.shards.pipeline import given
    from toolkit.data.sources.lerobot import LeRobotOptions, LeRobotSource

    data = LeRobotSource(root, options or LeRobotOptions())

    def jobs(split: str) -> Iterator[tuple]:
        for seq in data.sequences(split):
            yield partial(given, seq), 1

    total = sum(data.count(eps) for eps in data.split_episodes.values())
    return Source(splits={s: partial(jobs, s) for s in data.split_episodes}, total=total,
                  where="{src} split '{split}'", cond_fields=[[k, d] for k, d, _ in data.cond],
                  info={"lerobot": data.mapping()}, extra={"fps": data.info["fps"]})
