"""Atomic file and directory writes: write to a temporary sibling, then rename into place.

A reader (or a resumed run after `kill -9`) therefore sees either the old complete file/directory or the new
complete one, never a partial one. Temporary names start with `.tmp-` so they are easy to spot and clean.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    """The process umask (os.umask sets it and returns the old one; Python has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(is_dir: bool) -> int:
    """The permission bits `open(..., "w")` or `mkdir` would give a new file or directory under the umask.
    tempfile's mkstemp/mkdtemp make them private (0600/0700), which renamed into place would hide shards,
    reports and checkpoints from the other users of a shared filesystem."""
    return (0o777 if is_dir else 0o666) & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it onto `path`, else delete it.

    The temporary name keeps `path`'s extension, for writers that pick the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, plain_mode(is_dir=False))
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `path`; on success rename it onto `path`, else delete it.

    If `path` already exists it is replaced only when `overwrite` is true (the old directory is moved aside
    first and deleted after the new one is in place); otherwise `FileExistsError` is raised before any work.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent))
    os.chmod(tmp, plain_mode(is_dir=True))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, path)


def replace_dir(src: Path, dst: Path) -> None:
    """Rename directory `src` onto `dst`, replacing an existing `dst` with at most a moment of absence."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + dst.name + ".old.", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
