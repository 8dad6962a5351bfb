"""Encoded samples of tar members that arrive in any order, replayed in the order of the extracted folder.

A tar lists its members in whatever order it was written (BAIR's is not sorted), and a stream cannot be read
twice, so each TFRecord member's encoded samples are spilled to a file of their own in the conversion's
temporary directory and, once the tar has been read, replayed split by split (train, validate, test, then
others alphabetically, as `folders.find_splits`) and member by member (file names compared numerically, as
`tfrecord.list_tfrecord_files`). Each spill file is deleted as soon as it has been replayed, so the peak extra
disk use is about the size of the encoded dataset (a third of BAIR's tar), never the tar's.
"""

from __future__ import annotations

import pickle
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from toolkit.data.shards.pipeline import Encoded
from toolkit.data.sources.folders import SPLIT_ORDER, natural_key


class MemberSpill:
    """`add` encoded samples member by member; `splits()` replays them in folder order."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, dict[str, tuple[Path, int]]] = {}
        """split -> member name -> (spill file, samples)."""
        self.current: tuple[str, str] | None = None
        self.handle: BinaryIO | None = None

    def add(self, split: str, member: str, encoded: Encoded) -> None:
        if self.current != (split, member):
            self.close()
            path = self.root / f"{sum(len(m) for m in self.files.values()):06d}.pickle"
            self.files.setdefault(split, {})[member] = (path, 0)
            self.current, self.handle = (split, member), open(path, "wb")
        pickle.dump(tuple(encoded), self.handle, protocol=pickle.HIGHEST_PROTOCOL)
        path, count = self.files[split][member]
        self.files[split][member] = (path, count + 1)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle, self.current = None, None

    def count(self) -> int:
        return sum(n for members in self.files.values() for _, n in members.values())

    def splits(self) -> dict[str, Iterator[Encoded]]:
        """Split -> its samples in folder order, splits in `find_splits` order (lazy: read while iterated)."""
        self.close()
        known = [s for s in SPLIT_ORDER if s in self.files]
        names = known + sorted(s for s in self.files if s not in SPLIT_ORDER)
        return {split: self._replay(split) for split in names}

    def _replay(self, split: str) -> Iterator[Encoded]:
        members = self.files[split]
        for member in sorted(members, key=lambda m: natural_key(PurePosixPath(m).name)):
            path, _ = members[member]
            with open(path, "rb") as f:
                while True:
                    try:
                        yield Encoded(*pickle.load(f))  # our own file, written above
                    except EOFError:
                        break
            path.unlink()
