"""The BAIR "processed_data" folder layout: `{root}/{split}/traj_A_to_B/{k}/{0..29}.png` + csv files.

`actions.csv` holds one row per frame of 4 comma-separated numbers (no header), `endeffector_positions.csv`
one row of 3; unconditional data (moving shapes) has the frames only.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from toolkit.data.sequence import COND_FIELDS, IMAGE_SIZE, SEQ_LEN, Sequence, safe_key
from toolkit.errors import DataError

ACTIONS_CSV = "actions.csv"
POSITIONS_CSV = "endeffector_positions.csv"
TRAJ_GROUP = 256
"""Sequences per `traj_A_to_B` folder, as in BAIR (one original TFRecord file each)."""


def sequence_dir(split_dir: Path, index: int) -> Path:
    """Folder of the `index`-th sequence of a split: index 300 -> split_dir/traj_256_to_511/44."""
    start = (index // TRAJ_GROUP) * TRAJ_GROUP
    return Path(split_dir) / f"traj_{start}_to_{start + TRAJ_GROUP - 1}" / str(index % TRAJ_GROUP)


def write_sequence_dir(path: Path, frames: np.ndarray, actions: np.ndarray | None = None,
                       positions: np.ndarray | None = None) -> None:
    """Write one sequence: frames uint8 [T, H, W, 3] as 0.png.., and the csv files when actions are given."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):  # zlib level 1: the same pixels, 2.5x faster to write than PIL's 6
        Image.fromarray(frame).save(path / f"{t}.png", compress_level=1)
    if actions is not None:
        for name, rows in ((ACTIONS_CSV, actions), (POSITIONS_CSV, positions)):
            lines = [",".join(repr(float(v)) for v in row) for row in np.asarray(rows, dtype=np.float32)]
            (path / name).write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------
# Validating reader.
#
# Lenient on purpose: files other than `0.png .. {seq_len-1}.png` and the two csv files are ignored (so an
# extra `30.png`, or a `.DS_Store`, is fine: BAIR has exactly 30 frames), csv rows past `seq_len` are checked
# but not used, blank trailing csv lines and whitespace around numbers are accepted, and only directories
# named `traj_*` (in a split) and all-digit names (in a `traj_*` folder) are sequence folders.
# Everything else that is wrong raises `DataError` naming the file (and line) at fault.
# ---------------------------------------------------------------------------------------------------------

SPLIT_ORDER = ("train", "validate", "test")
"""Known splits, in the order `find_splits` lists them (other split folders follow alphabetically)."""
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def natural_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers: 'traj_256_to_511' after 'traj_0_to_255', '2' before '10'."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", name) if part)


def find_splits(root: Path) -> list[str]:
    """Split folders under `root`: train, validate, test first (when present), then any others alphabetically.

    Hidden folders (names starting with '.', e.g. atomic-write temporaries) are not splits.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    names = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not names:
        raise DataError(f"{root}: no split folders (expected e.g. train/ and test/)")
    known = [s for s in SPLIT_ORDER if s in names]
    return known + sorted(n for n in names if n not in SPLIT_ORDER)


def list_sequence_dirs(split_dir: Path) -> list[Path]:
    """All `traj_*/{k}` sequence folders of a split, traj folders and k sorted numerically (may be empty)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: not a directory")
    out: list[Path] = []
    trajs = [p for p in split_dir.iterdir() if p.is_dir() and p.name.startswith("traj_")]
    for traj in sorted(trajs, key=lambda p: natural_key(p.name)):
        seqs = [p for p in traj.iterdir() if p.is_dir() and p.name.isdigit()]
        out.extend(sorted(seqs, key=lambda p: (int(p.name), p.name)))
    return out


def _read_frame(path: Path, image_size: int) -> np.ndarray:
    """One frame as uint8 [S, S, 3]; DataError naming the file when it is not an S x S RGB PNG."""
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise DataError(f"{path}: not a readable PNG (it is {img.format or 'an unknown format'})")
            if img.mode != "RGB":
                raise DataError(f"{path}: mode {img.mode}, expected RGB")
            w, h = img.size
            if (w, h) != (image_size, image_size):
                raise DataError(f"{path}: frame is {w}x{h}, expected {image_size}x{image_size} (width x height)")
            img.load()
            return np.asarray(img, dtype=np.uint8).copy()
    except _PIL_ERRORS as e:
        raise DataError(f"{path}: not a readable PNG ({type(e).__name__}: {e})") from e


def _read_csv(path: Path, ncols: int, seq_len: int) -> np.ndarray:
    """Exactly `seq_len` rows of a headerless csv of `ncols` finite numbers per row, as float32 [T, ncols]."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for lineno, line in enumerate(lines, start=1):
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != ncols or not line.strip():
            got = 0 if not line.strip() else len(cells)
            raise DataError(f"{path} line {lineno}: expected {ncols} values, got {got}")
        row = []
        for cell in cells:
            try:
                value = float(cell)
            except ValueError:
                raise DataError(f"{path} line {lineno}: {cell!r} is not a number") from None
            if not np.isfinite(np.float32(value)):
                raise DataError(f"{path} line {lineno}: {cell!r} is not a finite float32 value")
            row.append(value)
        rows.append(row)
    if len(rows) != seq_len:  # one row per frame; any other count means the file does not match the frames
        raise DataError(f"{path}: {len(rows)} rows, expected {seq_len}")
    return np.asarray(rows, dtype=np.float32).reshape(seq_len, ncols)


def read_sequence_dir(path: Path, key: str, seq_len: int = SEQ_LEN, image_size: int = IMAGE_SIZE,
                      with_cond: bool | None = None) -> Sequence:
    """Read and validate one sequence folder: frames `0.png ..` and, when conditional, the two csv files.

    `with_cond=None` detects conditioning (both csv files -> cond [T, 7], neither -> cond [T, 0], exactly
    one -> DataError); True/False requires the csv files to be present/absent. Frames past `seq_len` are
    ignored; the csv files must have exactly `seq_len` rows.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a directory")
    has = {name: (path / name).is_file() for name in (ACTIONS_CSV, POSITIONS_CSV)}
    if with_cond is None:
        if has[ACTIONS_CSV] != has[POSITIONS_CSV]:
            present, absent = (ACTIONS_CSV, POSITIONS_CSV) if has[ACTIONS_CSV] else (POSITIONS_CSV, ACTIONS_CSV)
            raise DataError(f"{path / absent}: missing ({present} is present; conditional data needs both, "
                            f"unconditional data neither)")
        with_cond = has[ACTIONS_CSV]
    for name in (ACTIONS_CSV, POSITIONS_CSV):
        if has[name] != with_cond:
            what = "missing" if with_cond else "unexpected"
            raise DataError(f"{path / name}: {what} (this split is {'' if with_cond else 'un'}conditional: "
                            f"every sequence must {'have' if with_cond else 'lack'} {ACTIONS_CSV} and "
                            f"{POSITIONS_CSV})")
    frames = np.empty((seq_len, image_size, image_size, 3), dtype=np.uint8)
    for t in range(seq_len):
        frame_path = path / f"{t}.png"
        if not frame_path.is_file():
            raise DataError(f"{frame_path}: missing frame (expected 0.png .. {seq_len - 1}.png)")
        frames[t] = _read_frame(frame_path, image_size)
    if with_cond:
        cond = np.concatenate([_read_csv(path / name, n, seq_len)
                               for name, (_, n) in zip((ACTIONS_CSV, POSITIONS_CSV), COND_FIELDS)], axis=1)
    else:
        cond = np.zeros((seq_len, 0), dtype=np.float32)
    return Sequence(key=key, frames=frames, cond=cond, source=str(path))


def iter_folder_split(split_dir: Path, seq_len: int = SEQ_LEN, image_size: int = IMAGE_SIZE) -> Iterator[Sequence]:
    """Read every sequence of a split folder in numeric order, keys `safe_key(traj_folder, k)`.

    The first sequence decides whether the split is conditional; every other sequence must match it.
    An empty split (no `traj_*/{k}` folders) is an error. Keys are unique per split unless `safe_key` maps two
    folder names alike (`shards convert` rejects that).
    """
    split_dir = Path(split_dir)
    dirs = list_sequence_dirs(split_dir)
    if not dirs:
        raise DataError(f"{split_dir}: no sequence folders (expected traj_A_to_B/k/0.png ..)")
    with_cond: bool | None = None
    for d in dirs:
        seq = read_sequence_dir(d, safe_key(d.parent.name, d.name), seq_len=seq_len, image_size=image_size,
                                with_cond=with_cond)
        with_cond = seq.cond.shape[1] > 0
        yield seq


def folder_jobs(split_dir: Path, seq_len: int = SEQ_LEN, image_size: int = IMAGE_SIZE) -> Iterator[tuple]:
    """(job, 1) per sequence folder of a split, in numeric order: calling a job reads its folder (conditioning
    detected per folder; `shards convert` checks that every sequence of a dataset has the same cond size)."""
    dirs = list_sequence_dirs(split_dir)
    if not dirs:
        raise DataError(f"{Path(split_dir)}: no sequence folders (expected traj_A_to_B/k/0.png ..)")
    for d in dirs:
        yield partial(read_sequence_dir, d, safe_key(d.parent.name, d.name), seq_len, image_size), 1
