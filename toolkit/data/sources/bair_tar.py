"""The BAIR tarball (`bair_robot_pushing_dataset_v0.tar`) as a stream: its TFRecords read straight out of the tar,
from a local file, an http(s) URL or `-` (stdin), without extracting it.

The tar is read front to back once (tarfile's stream mode `r|*`, so a gzip/bz2/xz-compressed tar works too). Every
regular member `{root}/{split}/{name}.tfrecord(s)` is a TFRecord file of split `split` (BAIR's:
`softmotion30_44k/{train,test}/traj_A_to_B.tfrecords`); other members are skipped, as are hidden split folders and
TFRecords directly at the top. The members come in the tar's own order, which need not be sorted: `shards convert`
puts their records back into the order of the extracted folder (`shards/reorder.py`).

tarfile itself takes a damaged header after the first member, or a tar cut off between two members, for the end
of the archive; here both are errors, as is a tar that ends inside a member. Every error is a DataError naming the
tar, the member and, inside a TFRecord member, the record.
"""

from __future__ import annotations

import http.client
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from toolkit.data.sequence import IMAGE_SIZE, SEQ_LEN, safe_key
from toolkit.data.sources.tfrecord import decode_record, read_records
from toolkit.errors import DataError

SUFFIXES = (".tfrecord", ".tfrecords")
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, http.client.HTTPException)


class _HeaderProblem(Exception):
    """A tar header that is neither a member nor the end-of-archive marker (not a tarfile error, so tarfile's
    `next()` passes it on instead of ending the archive quietly)."""


class _StrictTarInfo(tarfile.TarInfo):
    @classmethod
    def fromtarfile(cls, tar):
        offset = tar.offset
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:  # a block of zeros: the end-of-archive marker
            raise
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            raise _HeaderProblem(f"the tar ends at byte {offset} without its end-of-archive marker "
                                 f"(truncated)") from None
        except tarfile.HeaderError as e:
            raise _HeaderProblem(f"corrupt tar header at byte {offset} ({e})") from None


class _Counting:
    """A read-only stream that counts the bytes read from it (the progress of a compressed tar is in these)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.count, self.reported = stream, 0, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        return data

    def news(self) -> int:
        """Bytes read since the last call."""
        news, self.reported = self.count - self.reported, self.count
        return news


def is_stream(location: str) -> bool:
    """Whether `shards convert --format tfrecord` reads `location` as a tar: `-`, a URL, or a file (not a folder)."""
    return location == "-" or location.startswith(("http://", "https://")) or Path(location).is_file()


def open_location(location: str) -> tuple[BinaryIO, int | None, str]:
    """(binary stream, size in bytes or None when unknown, name for messages) of a local file, an http(s) URL or
    `-` (stdin)."""
    if location == "-":
        return sys.stdin.buffer, None, "<stdin>"
    if location.startswith(("http://", "https://")):
        try:
            response = urllib.request.urlopen(location, timeout=60)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DataError(f"{location}: cannot download ({e})") from None
        length = response.headers.get("Content-Length", "")
        return response, int(length) if length.isdigit() else None, location
    try:
        f = open(location, "rb")
    except OSError as e:
        raise DataError(f"{location}: cannot open ({e.strerror or e})") from None
    return f, Path(location).stat().st_size, location


def member_split(name: str) -> tuple[str, str] | None:
    """(root, split) of a TFRecord member `{root}/{split}/{file}`, or None for any other member."""
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "/")]
    if len(parts) < 2 or PurePosixPath(parts[-1]).suffix not in SUFFIXES or parts[-2].startswith("."):
        return None
    return "/".join(parts[:-2]), parts[-2]


def tar_jobs(stream: BinaryIO, tar_name: str, seq_len: int = SEQ_LEN, image_size: int = IMAGE_SIZE) -> Iterator[tuple]:
    """(split, member name, job, bytes of `stream` read since the last job) per record of every TFRecord member of
    the tar read from `stream` (`open_location`; closed at the end), in the tar's order. Calling a job decodes its
    record into a Sequence keyed `safe_key(file_stem, record_index)` with source `{tar_name}:{member}#{record}`,
    as converting the extracted folder gives (but for the path)."""
    with stream:
        counting = _Counting(stream)
        try:
            tar = tarfile.open(fileobj=counting, mode="r|*", tarinfo=_StrictTarInfo)
        except (_HeaderProblem, *_READ_ERRORS) as e:
            raise DataError(f"{tar_name}: not a readable tar archive ({e})") from None
        roots: dict[str, str] = {}
        last = "the start"
        while (member := _next_member(tar, tar_name, last)) is not None:
            last = f"member {member.name}"
            where = member_split(member.name) if member.isfile() else None
            if where is None:
                continue
            root, split = where
            if member.name in roots:
                raise DataError(f"{tar_name}: member {member.name} appears twice in the tar")
            roots[member.name] = root
            if len(set(roots.values())) > 1:
                first = next(n for n, r in roots.items() if r != root)
                raise DataError(f"{tar_name}: TFRecords under two roots ({first} and {member.name}); convert "
                                f"one folder at a time")
            for job in _member_jobs(tar, member, f"{tar_name}:{member.name}", split, seq_len, image_size):
                yield *job, counting.news()
        if not roots:
            raise DataError(f"{tar_name}: no TFRecord members (expected e.g. "
                            f"softmotion30_44k/train/traj_0_to_255.tfrecords)")


def _next_member(tar: tarfile.TarFile, tar_name: str, last: str) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except _HeaderProblem as e:
        raise DataError(f"{tar_name}: {e}, after {last}") from None
    except _READ_ERRORS as e:
        raise DataError(f"{tar_name}: truncated or corrupt after {last} ({e})") from None


def _member_jobs(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, split: str, seq_len: int,
                 image_size: int) -> Iterator[tuple]:
    # the raw member file: a buffered one reads ahead, and a tar cut off inside the next record would be
    # reported while reading this one
    f = tar.extractfile(member).raw
    stem = PurePosixPath(member.name).stem
    index = 0
    try:
        for index, _, data in read_records(f, name, member.size):
            yield split, member.name, partial(decode_record, data, safe_key(stem, index), name, index, seq_len,
                                              image_size)
            index += 1
    except _READ_ERRORS as e:
        raise DataError(f"{name} record {index}: the tar ends inside this member (truncated; {e})") from None
