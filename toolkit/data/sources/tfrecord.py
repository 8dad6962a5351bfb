"""The original BAIR TFRecords (`softmotion30_44k/{train,test}/traj_*_to_*.tfrecords`), read without TensorFlow.

A TFRecord file is a sequence of records framed as
    uint64 length (LE) | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)
and each BAIR record is a serialized `tf.train.Example` holding, for t in 0..29, `{t}/image_aux1/encoded`
(one raw 64*64*3 uint8 RGB string, not PNG), `{t}/action` (4 floats) and `{t}/endeffector_pos` (3 floats);
other features (`{t}/image_main/encoded`, ...) are ignored. The Example itself is decoded by `protobuf.py`.
A small writer (`encode_example`, `write_tfrecord`, `make_bair_example`) exists for tests and tooling.
"""

from __future__ import annotations

import os
import struct
from functools import partial
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import google_crc32c
import numpy as np

from toolkit.data.sources.folders import natural_key
from toolkit.data.sources.protobuf import FeatureValues, ProtobufError, encode_example, parse_example
from toolkit.data.sequence import COND_DIM, COND_FIELDS, IMAGE_SIZE, SEQ_LEN, Sequence, safe_key
from toolkit.errors import DataError
from toolkit.fsutil import atomic_path

_MASK_DELTA = 0xA282EAD8
_HEADER = 12  # uint64 length + uint32 crc
_FOOTER = 4   # uint32 crc
FRAMING = _HEADER + _FOOTER
"""Bytes a record takes in its file besides its data."""


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C: rotate right by 15 bits, then add 0xa282ead8 (mod 2**32)."""
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------- framing


def iter_records(path: Path) -> Iterator[bytes]:
    """Stream the records of one TFRecord file, checking both CRCs; DataError names file, record and offset."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e})") from e
    with f:
        for _, _, data in read_records(f, str(path), os.fstat(f.fileno()).st_size):
            yield data


def read_records(f: BinaryIO, name: str, size: int) -> Iterator[tuple[int, int, bytes]]:
    """(index, byte offset, data) of every record of a TFRecord stream of `size` bytes (a file, or a member of a
    tar being streamed), checking both CRCs; DataError names `name`, the record and its offset."""
    offset, index = 0, 0
    while True:
        where = f"{name} record {index} at byte {offset}"
        header = f.read(_HEADER)
        if not header:
            return
        if len(header) < _HEADER:
            raise DataError(f"{where}: truncated header ({len(header)} of {_HEADER} bytes)")
        length, length_crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != length_crc:
            raise DataError(f"{where}: bad length CRC (corrupt record header)")
        if offset + _HEADER + length + _FOOTER > size:
            raise DataError(f"{where}: truncated data (needs {length} + {_FOOTER} CRC bytes after the "
                            f"header, the file has {size - offset - _HEADER})")
        data = f.read(length)
        footer = f.read(_FOOTER)
        if len(data) < length or len(footer) < _FOOTER:  # the file shrank while we read it
            raise DataError(f"{where}: truncated data")
        if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
            raise DataError(f"{where}: bad data CRC (corrupt record of {length} bytes)")
        yield index, offset, data
        offset += _HEADER + length + _FOOTER
        index += 1


def write_tfrecord(path: Path, records: Iterable[bytes]) -> int:
    """Write records as one TFRecord file, atomically; returns the number of records."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for data in records:
            data = bytes(data)
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", masked_crc32c(length)))
            f.write(data + struct.pack("<I", masked_crc32c(data)))
            count += 1
    return count


# ----------------------------------------------------------------------------------------------- BAIR


def _keys(t: int) -> tuple[str, ...]:
    """The features of step t: the image, then the `COND_FIELDS` (`{t}/action`, `{t}/endeffector_pos`)."""
    return (f"{t}/image_aux1/encoded", *(f"{t}/{name}" for name, _ in COND_FIELDS))


def make_bair_example(frames: np.ndarray, actions: np.ndarray, eef: np.ndarray) -> bytes:
    """A BAIR-style Example: frames uint8 [T, S, S, 3], actions [T, 4], end-effector positions [T, 3].

    Each step also gets a `{t}/image_main/encoded` holding the frame's bytes reversed, so a reader that
    mixes up the two cameras fails a round trip.
    """
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    actions, eef = np.asarray(actions, np.float32), np.asarray(eef, np.float32)
    T = len(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or actions.shape != (T, 4) or eef.shape != (T, 3):
        raise ValueError(f"bad shapes: frames {frames.shape}, actions {actions.shape}, eef {eef.shape}")
    features: dict = {}
    for t in range(T):
        img, act, pos = _keys(t)
        features[act] = actions[t]
        features[pos] = eef[t]
        features[img] = [frames[t].tobytes()]
        features[f"{t}/image_main/encoded"] = [frames[t].tobytes()[::-1]]
    return encode_example(features)


def _floats(features: dict, key: str, n: int, source: str) -> list[float]:
    if key not in features:
        raise DataError(f"{source}: missing feature {key!r}")
    values = features[key]
    if len(values) != n or not all(isinstance(v, float) for v in values):
        kind = {bytes: "bytes values", int: "ints"}.get(type(values[0]) if values else float, "floats")
        raise DataError(f"{source}: feature {key!r} has {len(values)} {kind}, expected {n} floats")
    if not np.all(np.isfinite(values)):
        raise DataError(f"{source}: feature {key!r} has a non-finite value {values}")
    return values


def read_bair_example(features: dict[str, FeatureValues], seq_len: int = SEQ_LEN, image_size: int = IMAGE_SIZE,
                      source: str = "<example>") -> tuple[np.ndarray, np.ndarray]:
    """Validate a parsed BAIR Example: frames uint8 [T, S, S, 3], cond float32 [T, COND_DIM] (the features of
    `COND_FIELDS` in order: action, then end-effector position)."""
    nbytes = image_size * image_size * 3
    frames = np.empty((seq_len, image_size, image_size, 3), dtype=np.uint8)
    cond = np.empty((seq_len, COND_DIM), dtype=np.float32)
    for t in range(seq_len):
        img, act, pos = _keys(t)
        if img not in features:
            raise DataError(f"{source}: missing feature {img!r}")
        values = features[img]
        if len(values) != 1 or not isinstance(values[0], bytes):
            raise DataError(f"{source}: feature {img!r} has {len(values)} values, expected one bytes value")
        if len(values[0]) != nbytes:
            raise DataError(f"{source}: feature {img!r} has {len(values[0])} bytes, expected {nbytes} "
                            f"(raw {image_size}x{image_size} RGB)")
        frames[t] = np.frombuffer(values[0], dtype=np.uint8).reshape(image_size, image_size, 3)
        offset = 0
        for key, (_, n) in zip((act, pos), COND_FIELDS):
            cond[t, offset:offset + n] = _floats(features, key, n, source)
            offset += n
    return frames, cond


def list_tfrecord_files(split_dir: Path) -> list[Path]:
    """`*.tfrecord` and `*.tfrecords` files of a split folder, sorted numerically by name."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: not a directory")
    files = [p for p in split_dir.iterdir() if p.is_file() and p.suffix in (".tfrecord", ".tfrecords")]
    return sorted(files, key=lambda p: natural_key(p.name))


def decode_record(data: bytes, key: str, name: str, index: int, seq_len: int = SEQ_LEN,
                  image_size: int = IMAGE_SIZE) -> Sequence:
    """One BAIR record of file (or tar member) `name` as a Sequence with source `{name}#{index}`."""
    source = f"{name}#{index}"
    try:
        features = parse_example(data)
    except ProtobufError as e:
        raise DataError(f"{name} record {index}: malformed tf.train.Example ({e})") from e
    frames, cond = read_bair_example(features, seq_len, image_size, source=source)
    return Sequence(key=key, frames=frames, cond=cond, source=source)


def tfrecord_jobs(split_dir: Path, seq_len: int = SEQ_LEN, image_size: int = IMAGE_SIZE) -> Iterator[tuple]:
    """(job, bytes read) per record of a split folder, in order: calling a job decodes its record into a Sequence
    with key `safe_key(file_stem, record_index)` (`a.tfrecord` and `a.tfrecords` would give the same keys:
    `shards convert` rejects that). Framing and CRCs are checked here, the Example when the job runs."""
    files = list_tfrecord_files(split_dir)
    if not files:
        raise DataError(f"{split_dir}: no *.tfrecord or *.tfrecords files")
    records = 0
    for path in files:
        for index, data in enumerate(iter_records(path)):
            records += 1
            yield partial(decode_record, data, safe_key(path.stem, index), str(path), index, seq_len,
                          image_size), FRAMING + len(data)
    if not records:
        raise DataError(f"{split_dir}: the tfrecord files hold no records")


def iter_tfrecord_split(split_dir: Path, seq_len: int = SEQ_LEN, image_size: int = IMAGE_SIZE) -> Iterator[Sequence]:
    """Read every BAIR record of a split folder (`tfrecord_jobs`, run in order)."""
    for job, _ in tfrecord_jobs(split_dir, seq_len, image_size):
        yield job()
