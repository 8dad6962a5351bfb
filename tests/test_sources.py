"""Source readers: the BAIR folder layout (folders.py) and the TensorFlow-free TFRecord reader (tfrecord.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.data.sources.folders import (ACTIONS_CSV, POSITIONS_CSV, find_splits, iter_folder_split,
                                          list_sequence_dirs, read_sequence_dir, sequence_dir, write_sequence_dir)
from toolkit.data.sources.tfrecord import (ProtobufError, encode_example, iter_records, iter_tfrecord_split,
                                   make_bair_example, masked_crc32c, parse_example, read_bair_example,
                                   write_tfrecord)
from toolkit.errors import DataError

import google_crc32c

T, S = 30, 64


def random_seq(rng: np.random.Generator, t: int = T, s: int = S):
    frames = rng.integers(0, 256, size=(t, s, s, 3), dtype=np.uint8)
    actions = rng.normal(size=(t, 4)).astype(np.float32)
    eef = rng.normal(size=(t, 3)).astype(np.float32)
    return frames, actions, eef


# ---------------------------------------------------------------------------------------------- CRC


def test_crc32c_check_value_and_mask():
    assert google_crc32c.value(b"123456789") == 0xE3069283
    # 0xE3069283 = 11100011000001101001001010000011; rotated right by 15 bits:
    #              00100101000001111100011000001101 = 0x2507C60D; + 0xA282EAD8 = 0xC78AB0E5
    assert masked_crc32c(b"123456789") == 0xC78AB0E5
    assert masked_crc32c(b"") == 0xA282EAD8  # crc32c("") == 0
    # a case where the addition wraps around 2**32
    crc = google_crc32c.value(b"a")  # 0xC1D04330
    assert crc == 0xC1D04330
    rot = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    assert rot == 0x866183A0
    assert masked_crc32c(b"a") == (0x866183A0 + 0xA282EAD8) - 2**32 == 0x28E46E78


# ----------------------------------------------------------------------------------------- protobuf

# tf.train.Example, assembled by hand from the wire format (tag = field << 3 | wire type):
HAND_EXAMPLE = bytes.fromhex(
    "28 9601"                      # Example field 5 (unknown), varint 150 -> skipped
    "31 0102030405060708"          # Example field 6 (unknown), fixed64 -> skipped
    "0A 51"                        # Example.features (field 1, 81 bytes)
    # entry 1: "img" -> BytesList [01 02 03]
    "0A 0E"  "0A 03 696D67"  "12 07" "0A 05" "0A 03 010203"
    # entry 2: "pk" -> FloatList packed [1.0, 2.5]
    "0A 12"  "0A 02 706B"    "12 0C" "12 0A" "0A 08 0000803F 00002040"
    # entry 3: "up" -> FloatList unpacked [-0.5, 4.0] (two wire-type-5 fields)
    "0A 12"  "0A 02 7570"    "12 0C" "12 0A" "0D 000000BF" "0D 00008040"
    # entry 4: "n" -> Int64List: unpacked 150, then packed [-1, 5]
    "0A 17"  "0A 01 6E"      "12 12" "1A 10" "08 9601" "0A 0B FFFFFFFFFFFFFFFFFF01 05"
)


def test_parse_hand_assembled_example():
    assert len(HAND_EXAMPLE) == 95
    assert parse_example(HAND_EXAMPLE) == {"img": [b"\x01\x02\x03"], "pk": [1.0, 2.5], "up": [-0.5, 4.0],
                                           "n": [150, -1, 5]}


@pytest.mark.parametrize("bad", [HAND_EXAMPLE[:-1], HAND_EXAMPLE[:3] + b"\x0A\x7F", b"\x0F", b"\x80" * 11,
                                 b"\x00\x00"])
def test_parse_malformed_example(bad):
    with pytest.raises(ProtobufError):
        parse_example(bad)
    assert issubclass(ProtobufError, ValueError)


def test_encode_parse_round_trip():
    rng = np.random.default_rng(0)
    features = {
        "b": [rng.bytes(int(n)) for n in rng.integers(0, 300, size=4)],
        "f": rng.normal(size=17).astype(np.float32).tolist(),
        "i": [int(v) for v in rng.integers(-2**63, 2**63 - 1, size=9, dtype=np.int64)] + [0, -1, 2**63 - 1],
        "empty": [],
        "név/ü": [b""],
    }
    assert parse_example(encode_example(features)) == features


# ----------------------------------------------------------------------------------------- TFRecords


def write_bair_split(split: Path, rng, n: int = 3, name: str = "traj_0_to_255.tfrecords"):
    seqs = [random_seq(rng) for _ in range(n)]
    write_tfrecord(split / name, [make_bair_example(*s) for s in seqs])
    return seqs


def test_tfrecord_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    seqs = write_bair_split(tmp_path, rng)
    out = list(iter_tfrecord_split(tmp_path))
    assert [s.key for s in out] == ["traj_0_to_255__0", "traj_0_to_255__1", "traj_0_to_255__2"]
    for seq, (frames, actions, eef) in zip(out, seqs):
        assert seq.frames.dtype == np.uint8 and seq.frames.shape == (T, S, S, 3)
        assert seq.frames.tobytes() == frames.tobytes()
        assert seq.cond.dtype == np.float32 and seq.cond.shape == (T, 7)
        np.testing.assert_array_equal(seq.cond, np.concatenate([actions, eef], axis=1))
    assert out[1].source == f"{tmp_path / 'traj_0_to_255.tfrecords'}#1"


def test_tfrecord_files_sorted_numerically(tmp_path):
    rng = np.random.default_rng(2)
    frames, actions, eef = random_seq(rng, t=2, s=4)
    for name in ["traj_256_to_511.tfrecords", "traj_0_to_255.tfrecords", "traj_1024_to_1279.tfrecord"]:
        write_tfrecord(tmp_path / name, [make_bair_example(frames, actions, eef)] * 2)
    (tmp_path / "notes.txt").write_text("ignored")
    keys = [s.key for s in iter_tfrecord_split(tmp_path, seq_len=2, image_size=4)]
    assert keys == ["traj_0_to_255__0", "traj_0_to_255__1", "traj_256_to_511__0", "traj_256_to_511__1",
                    "traj_1024_to_1279__0", "traj_1024_to_1279__1"]


def _record_layout(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each record, from the framing."""
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        out.append((pos, n))
        pos += 16 + n
    return out


def _mutate(path: Path, fn) -> None:
    path.write_bytes(fn(bytearray(path.read_bytes()), _record_layout(path)))


def _flip(data: bytearray, i: int) -> bytearray:
    data[i] ^= 0x01
    return data


@pytest.mark.parametrize("mutation, problem", [
    (lambda d, r: d[:r[1][0] + 5], "record 1 at byte {off1}: truncated header"),
    (lambda d, r: d[:r[2][0] + 12 + 1000], "record 2 at byte {off2}: truncated data"),
    (lambda d, r: d[:-1], "record 2 at byte {off2}: truncated data"),
    (lambda d, r: _flip(d, r[1][0] + 12 + 500), "record 1 at byte {off1}: bad data CRC"),
    (lambda d, r: _flip(d, r[2][0] + 1), "record 2 at byte {off2}: bad length CRC"),
    (lambda d, r: _flip(d, r[0][0] + 9), "record 0 at byte 0: bad length CRC"),
])
def test_tfrecord_framing_errors(tmp_path, mutation, problem):
    rng = np.random.default_rng(3)
    write_bair_split(tmp_path, rng)
    path = tmp_path / "traj_0_to_255.tfrecords"
    layout = _record_layout(path)
    _mutate(path, mutation)
    with pytest.raises(DataError) as e:
        list(iter_tfrecord_split(tmp_path))
    assert str(path) in str(e.value)
    assert problem.format(off1=layout[1][0], off2=layout[2][0]) in str(e.value)


def test_iter_records_streams_valid_prefix(tmp_path):
    path = tmp_path / "x.tfrecord"
    write_tfrecord(path, [b"one", b"", b"three"])
    assert list(iter_records(path)) == [b"one", b"", b"three"]
    path.write_bytes(path.read_bytes()[:-2])
    records = iter_records(path)
    assert next(records) == b"one" and next(records) == b""
    with pytest.raises(DataError, match="record 2 at byte 35: truncated data"):
        next(records)


def _example_features(rng, t: int = 3, s: int = 4) -> dict:
    return parse_example(make_bair_example(*random_seq(rng, t, s)))


@pytest.mark.parametrize("edit, problem", [
    (lambda f: f.pop("2/action"), "missing feature '2/action'"),
    (lambda f: f.pop("1/image_aux1/encoded"), "missing feature '1/image_aux1/encoded'"),
    (lambda f: f.pop("0/endeffector_pos"), "missing feature '0/endeffector_pos'"),
    (lambda f: f.__setitem__("1/image_aux1/encoded", [b"\x00" * 47]), "has 47 bytes, expected 48"),
    (lambda f: f.__setitem__("2/action", [1.0, 2.0, 3.0]), "'2/action' has 3 floats, expected 4"),
    (lambda f: f.__setitem__("1/endeffector_pos", [1, 2, 3]), "'1/endeffector_pos' has 3 ints"),
    (lambda f: f.__setitem__("0/action", [1.0, float("nan"), 0.0, 0.0]), "non-finite"),
])
def test_tfrecord_content_errors(tmp_path, edit, problem):
    features = _example_features(np.random.default_rng(4))
    edit(features)
    path = tmp_path / "traj_0_to_255.tfrecords"
    good = make_bair_example(*random_seq(np.random.default_rng(5), 3, 4))
    write_tfrecord(path, [good, encode_example(features)])
    with pytest.raises(DataError) as e:
        list(iter_tfrecord_split(tmp_path, seq_len=3, image_size=4))
    assert f"{path}#1: " in str(e.value) and problem in str(e.value)


def test_tfrecord_malformed_protobuf_and_empty_split(tmp_path):
    path = tmp_path / "a.tfrecord"
    write_tfrecord(path, [b"\x0A\x05\x01"])
    with pytest.raises(DataError, match=r"a\.tfrecord record 0: malformed tf\.train\.Example"):
        list(iter_tfrecord_split(tmp_path))
    path.unlink()
    with pytest.raises(DataError, match="no \\*.tfrecord"):
        list(iter_tfrecord_split(tmp_path))


def test_read_bair_example_ignores_extras():
    rng = np.random.default_rng(6)
    frames, actions, eef = random_seq(rng, 2, 4)
    features = parse_example(make_bair_example(frames, actions, eef))
    assert "0/image_main/encoded" in features
    features["0/other"] = [7]
    got_frames, cond = read_bair_example(features, seq_len=2, image_size=4)
    assert got_frames.tobytes() == frames.tobytes()
    np.testing.assert_array_equal(cond, np.concatenate([actions, eef], axis=1))


# ------------------------------------------------------------------------------------------- folders


def test_folder_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    split = tmp_path / "train"
    seqs = {i: random_seq(rng) for i in (0, 300)}
    for i, (frames, actions, eef) in seqs.items():
        write_sequence_dir(sequence_dir(split, i), frames, actions.astype(np.float64), eef.astype(np.float64))
    out = list(iter_folder_split(split))
    assert [s.key for s in out] == ["traj_0_to_255__0", "traj_256_to_511__44"]
    for seq, (frames, actions, eef) in zip(out, seqs.values()):
        assert seq.frames.dtype == np.uint8 and seq.frames.tobytes() == frames.tobytes()
        assert seq.cond.dtype == np.float32 and seq.cond.shape == (T, 7)
        np.testing.assert_array_equal(seq.cond, np.concatenate([actions, eef], axis=1))
    assert out[1].source == str(split / "traj_256_to_511" / "44")


def test_folder_unconditional(tmp_path):
    rng = np.random.default_rng(8)
    frames = [random_seq(rng)[0] for _ in range(2)]
    for i, f in enumerate(frames):
        write_sequence_dir(sequence_dir(tmp_path, i), f)
    out = list(iter_folder_split(tmp_path))
    assert [s.cond.shape for s in out] == [(T, 0), (T, 0)]
    assert all(s.frames.tobytes() == f.tobytes() for s, f in zip(out, frames))


def test_folder_csv_whitespace_blank_lines_and_extra_frames(tmp_path):
    d = tmp_path / "seq"
    write_sequence_dir(d, np.zeros((4, 8, 8, 3), np.uint8))
    (d / ACTIONS_CSV).write_text(" 1, 2 ,3,4\n5,6,7,8.5\r\n\n  \n")
    (d / POSITIONS_CSV).write_text("1e-3,-2,3\n4,5,6\n")
    seq = read_sequence_dir(d, "k", seq_len=2, image_size=8)  # 2.png, 3.png are extra frames: ignored
    np.testing.assert_array_equal(seq.cond, np.float32([[1, 2, 3, 4, 1e-3, -2, 3], [5, 6, 7, 8.5, 4, 5, 6]]))


def _seq(tmp_path: Path, cond: bool = True) -> Path:
    rng = np.random.default_rng(9)
    frames, actions, eef = random_seq(rng, 4, 8)
    d = tmp_path / "train" / "traj_0_to_255" / "3"
    write_sequence_dir(d, frames, *((actions, eef) if cond else ()))
    return d


def _save(path: Path, mode: str, size: tuple[int, int], fmt: str = "PNG") -> None:
    Image.new(mode, size).save(path, format=fmt)


@pytest.mark.parametrize("break_it, file, problem", [
    (lambda d: (d / "2.png").unlink(), "2.png", "missing frame (expected 0.png .. 3.png)"),
    (lambda d: _save(d / "1.png", "RGB", (8, 6)), "1.png", "frame is 8x6, expected 8x8"),
    (lambda d: _save(d / "1.png", "L", (8, 8)), "1.png", "mode L, expected RGB"),
    (lambda d: _save(d / "1.png", "RGBA", (8, 8)), "1.png", "mode RGBA, expected RGB"),
    (lambda d: (d / "0.png").write_bytes(b"not a png at all"), "0.png", "not a readable PNG"),
    (lambda d: (d / "0.png").write_bytes((d / "0.png").read_bytes()[:60]), "0.png", "not a readable PNG"),
    (lambda d: _save(d / "3.png", "RGB", (8, 8), "JPEG"), "3.png", "not a readable PNG"),
    (lambda d: (d / ACTIONS_CSV).write_text("1,2,3,4\n" * 3), ACTIONS_CSV, "3 rows, expected 4"),
    (lambda d: (d / POSITIONS_CSV).write_text("1,2,3\n" * 5), POSITIONS_CSV, "5 rows, expected 4"),
    (lambda d: (d / ACTIONS_CSV).write_text("1,2,3,4\n1,2,3\n1,2,3,4\n1,2,3,4\n"), ACTIONS_CSV,
     "line 2: expected 4 values, got 3"),
    (lambda d: (d / POSITIONS_CSV).write_text("1,2,3\n1,2,3\n1,abc,3\n1,2,3\n"), POSITIONS_CSV,
     "line 3: 'abc' is not a number"),
    (lambda d: (d / ACTIONS_CSV).write_text("1,2,3,4\n1,2,3,4\n1,2,3,4\n1,nan,3,4\n"), ACTIONS_CSV,
     "line 4: 'nan' is not a finite"),
    (lambda d: (d / ACTIONS_CSV).write_text("1,2,3,4\n1,2,3,inf\n1,2,3,4\n1,2,3,4\n"), ACTIONS_CSV,
     "line 2: 'inf' is not a finite"),
    (lambda d: (d / ACTIONS_CSV).write_text("1,2,3,4\n\n1,2,3,4\n1,2,3,4\n1,2,3,4\n"), ACTIONS_CSV,
     "line 2: expected 4 values, got 0"),
    (lambda d: (d / POSITIONS_CSV).unlink(), POSITIONS_CSV, "missing (actions.csv is present"),
    (lambda d: (d / ACTIONS_CSV).unlink(), ACTIONS_CSV, "missing (endeffector_positions.csv is present"),
])
def test_folder_errors(tmp_path, break_it, file, problem):
    d = _seq(tmp_path)
    break_it(d)
    with pytest.raises(DataError) as e:
        read_sequence_dir(d, "k", seq_len=4, image_size=8)
    assert f"{d / file}" in str(e.value) and problem in str(e.value)


def test_folder_mixed_split_is_an_error(tmp_path):
    split = tmp_path / "split"
    rng = np.random.default_rng(10)
    frames, actions, eef = random_seq(rng, 4, 8)
    write_sequence_dir(sequence_dir(split, 0), frames, actions, eef)
    write_sequence_dir(sequence_dir(split, 1), frames)
    with pytest.raises(DataError) as e:
        list(iter_folder_split(split, seq_len=4, image_size=8))
    assert f"{sequence_dir(split, 1) / ACTIONS_CSV}: missing" in str(e.value)
    # the other way round: unconditional first, then a conditional one
    split2 = tmp_path / "split2"
    write_sequence_dir(sequence_dir(split2, 0), frames)
    write_sequence_dir(sequence_dir(split2, 1), frames, actions, eef)
    with pytest.raises(DataError, match="actions.csv: unexpected"):
        list(iter_folder_split(split2, seq_len=4, image_size=8))


def test_numeric_sorting(tmp_path):
    split = tmp_path / "train"
    for rel in ["traj_256_to_511/2", "traj_0_to_255/10", "traj_0_to_255/2", "traj_1024_to_1279/0",
                "traj_0_to_255/100", "traj_256_to_511/11"]:
        (split / rel).mkdir(parents=True)
    (split / "traj_0_to_255" / "notes").mkdir()
    (split / "README").write_text("not a traj folder")
    assert [p.relative_to(split).as_posix() for p in list_sequence_dirs(split)] == [
        "traj_0_to_255/2", "traj_0_to_255/10", "traj_0_to_255/100", "traj_256_to_511/2", "traj_256_to_511/11",
        "traj_1024_to_1279/0"]


def test_find_splits_and_empty_split(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        find_splits(tmp_path)
    for name in ["test", "zeta", "train", "extra", "validate", ".tmp-x"]:
        (tmp_path / name).mkdir()
    (tmp_path / "file.txt").write_text("")
    assert find_splits(tmp_path) == ["train", "validate", "test", "extra", "zeta"]
    with pytest.raises(DataError, match="no sequence folders"):
        list(iter_folder_split(tmp_path / "train"))
