"""Shard conversion and verification: real round trips on tiny datasets, every bad input, atomicity."""

from __future__ import annotations

import io
import os
import stat

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from toolkit.cli import main
from toolkit.data.sources import tfrecord
from toolkit.data.loader import eval_loader
from toolkit.data.shards.manifest import read_manifest
from toolkit.data.sequence import safe_key
from toolkit.data.shards.convert import convert
from toolkit.data.shards.verify import verify_shards
from toolkit.errors import DataError

from conftest import png_offset, random_sequence, write_bair_folders


def load_all(location: str, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every sequence of a split through the real loader, as (uint8 frames [T,H,W,3], cond) by key."""
    out = {}
    for batch in eval_loader(location, split, batch_size=2, window=30, num_workers=0):
        frames = batch.frames.permute(0, 1, 3, 4, 2)
        for key, f, c in zip(batch.keys, frames.numpy(), batch.cond.numpy()):
            assert key not in out
            out[key] = (f, c)
    return out


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err


def no_leftovers(parent: Path) -> bool:
    return not any(p.name.startswith(".tmp-") for p in parent.iterdir())


@pytest.mark.parametrize("encoding", ["png", "npy"])
def test_folder_shard_loader_round_trip(bair_folders, tmp_path, encoding):
    src, expected = bair_folders
    out = tmp_path / "shards"
    convert(src, out, maxcount=2, encoding=encoding, progress=False)
    for split, seqs in expected.items():
        got = load_all(str(out), split)
        assert sorted(got) == sorted(seqs)
        for key, (frames, cond) in seqs.items():
            np.testing.assert_array_equal(got[key][0], frames)  # exact pixels
            np.testing.assert_array_equal(got[key][1], cond)  # exact float32 csv values
    assert verify_shards(str(out), progress=False) == {s: len(v) for s, v in expected.items()}


def test_manifest_records_shards_counts_shapes_and_checksums(bair_folders, tmp_path):
    src, _ = bair_folders
    out = tmp_path / "shards"
    data = convert(src, out, maxcount=2, progress=False)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == data
    assert data["encoding"] == "png" and data["seq_len"] == 30 and data["frame_shape"] == [64, 64, 3]
    assert data["cond_dim"] == 7 and data["cond_fields"] == [["action", 4], ["endeffector_pos", 3]]
    train = data["splits"]["train"]
    assert train["count"] == 5 and [s["count"] for s in train["shards"]] == [2, 2, 1]
    assert [s["name"] for s in train["shards"]] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    for split in data["splits"].values():
        for shard in split["shards"]:
            blob = (out / shard["name"]).read_bytes()
            assert shard["bytes"] == len(blob) and shard["sha256"] == hashlib.sha256(blob).hexdigest()


def test_conversion_is_reproducible(bair_folders, tmp_path):
    src, _ = bair_folders
    a = convert(src, tmp_path / "a", progress=False)
    b = convert(src, tmp_path / "b", progress=False)
    checksums = [[s["sha256"] for s in m["splits"]["train"]["shards"]] for m in (a, b)]
    assert checksums[0] == checksums[1]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_shards_get_the_modes_mkdir_and_open_would_give(bair_folders, tmp_path, umask):
    src, _ = bair_folders
    old = os.umask(umask)
    try:  # tempfile makes its directories 0700 and files 0600: renamed into place they would hide the shards
        convert(src, tmp_path / "shards", maxcount=2, progress=False)
    finally:
        os.umask(old)
    files = sorted((tmp_path / "shards").iterdir())
    assert len(files) == 1 + 3 + 2 + 1  # manifest, train 3 shards, validate 2, test 1
    assert stat.S_IMODE((tmp_path / "shards").stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o666 & ~umask}


def test_unconditional_folders_give_cond_dim_zero(tmp_path):
    expected = write_bair_folders(tmp_path / "src", {"train": 2}, cond=False)
    data = convert(tmp_path / "src", tmp_path / "out", progress=False)
    assert data["cond_dim"] == 0 and data["cond_fields"] == []
    got = load_all(str(tmp_path / "out"), "train")
    for key, (frames, _) in expected["train"].items():
        np.testing.assert_array_equal(got[key][0], frames)
        assert got[key][1].shape == (30, 0)


def test_tfrecord_shard_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    seqs = [random_sequence(rng) for _ in range(3)]
    for split, items in (("train", seqs[:2]), ("test", seqs[2:])):
        records = [tfrecord.make_bair_example(f, a, p) for f, a, p in items]
        tfrecord.write_tfrecord(tmp_path / "bair" / split / "traj_0_to_255.tfrecords", records)
    code = main(["shards", "convert", str(tmp_path / "bair"), str(tmp_path / "out"), "--format", "tfrecord",
                 "--quiet"])
    assert code is None
    m = read_manifest(str(tmp_path / "out"))
    assert m.count("train") == 2 and m.count("test") == 1 and m.cond_dim == 7
    got = load_all(str(tmp_path / "out"), "train")
    for i, (frames, actions, positions) in enumerate(seqs[:2]):
        f, c = got[safe_key("traj_0_to_255", i)]
        np.testing.assert_array_equal(f, frames)
        np.testing.assert_array_equal(c, np.concatenate([actions, positions], 1))


def _break_missing_frame(seq: Path):
    (seq / "17.png").unlink()
    return "17.png", "missing"


def _break_size(seq: Path):
    from PIL import Image
    Image.new("RGB", (64, 48)).save(seq / "5.png")
    return "5.png", "48"


def _break_rows(seq: Path):
    lines = (seq / "actions.csv").read_text().splitlines()
    (seq / "actions.csv").write_text("\n".join(lines[:-1]) + "\n")
    return "actions.csv", "29"


def _break_number(seq: Path):
    lines = (seq / "endeffector_positions.csv").read_text().splitlines()
    lines[6] = "0.1,abc,0.3"
    (seq / "endeffector_positions.csv").write_text("\n".join(lines) + "\n")
    return "endeffector_positions.csv", "line 7"


@pytest.mark.parametrize("breaker", [_break_missing_frame, _break_size, _break_rows, _break_number])
def test_bad_folder_input_clear_error_and_no_partial_output(tmp_path, capsys, breaker):
    write_bair_folders(tmp_path / "src", {"train": 3, "test": 2})
    # Break the last split so that earlier shards were already written when the error is found.
    filename, detail = breaker(tmp_path / "src" / "test" / "traj_0_to_255" / "1")
    code, err = run_cli(["shards", "convert", str(tmp_path / "src"), str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert f"test/traj_0_to_255/1/{filename}" in err and detail in err
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_bad_tfrecord_input_clear_error_and_no_partial_output(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "bair" / "train" / "traj_0_to_255.tfrecords"
    tfrecord.write_tfrecord(path, [tfrecord.make_bair_example(*random_sequence(rng)) for _ in range(2)])
    path.write_bytes(path.read_bytes()[:-100])  # truncated second record
    code, err = run_cli(["shards", "convert", str(tmp_path / "bair"), str(tmp_path / "out"), "--format",
                         "tfrecord", "--quiet"], capsys)
    assert code == 2 and "traj_0_to_255.tfrecords" in err and "truncated" in err.lower()
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_sequences_with_the_same_key_are_rejected(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for name in ("traj_0_to_255.tfrecord", "traj_0_to_255.tfrecords"):  # one stem: the same keys
        tfrecord.write_tfrecord(tmp_path / "bair" / "train" / name,
                                [tfrecord.make_bair_example(*random_sequence(rng))])
    code, err = run_cli(["shards", "convert", str(tmp_path / "bair"), str(tmp_path / "out"), "--format",
                         "tfrecord", "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "traj_0_to_255.tfrecords#0: sequence key 'traj_0_to_255__0'" in err and "traj_0_to_255.tfrecord#0" in err
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)
    write_bair_folders(tmp_path / "src", {"train": 1})
    (tmp_path / "src" / "train" / "traj_0_to_255").rename(tmp_path / "src" / "train" / "traj_0.to_255")
    write_bair_folders(tmp_path / "src2", {"train": 1})  # traj_0-to_255 maps to the same key as traj_0.to_255
    (tmp_path / "src2" / "train" / "traj_0_to_255").rename(tmp_path / "src" / "train" / "traj_0-to_255")
    code, err = run_cli(["shards", "convert", str(tmp_path / "src"), str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and "sequence key 'traj_0-to_255__0'" in err and "is also the key of" in err
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_existing_output_needs_overwrite(bair_folders, tmp_path, capsys):
    src, _ = bair_folders
    out = tmp_path / "out"
    convert(src, out, maxcount=4, progress=False)
    before = (out / "manifest.json").read_bytes()
    code, err = run_cli(["shards", "convert", str(src), str(out), "--quiet"], capsys)
    assert code == 2 and "--overwrite" in err
    assert (out / "manifest.json").read_bytes() == before
    main(["shards", "convert", str(src), str(out), "--maxcount", "1", "--overwrite", "--quiet"])
    assert len(read_manifest(str(out)).shard_names("train")) == 5 and no_leftovers(tmp_path)


def test_missing_source_and_bad_arguments(tmp_path, capsys):
    code, err = run_cli(["shards", "convert", str(tmp_path / "nope"), str(tmp_path / "out")], capsys)
    assert code == 2 and "nope" in err
    (tmp_path / "src").mkdir()
    code, err = run_cli(["shards", "convert", str(tmp_path / "src"), str(tmp_path / "out"), "--maxcount", "0"], capsys)
    assert code == 2 and "--maxcount" in err


def test_verify_detects_corruption(bair_folders, tmp_path, capsys):
    src, _ = bair_folders
    out = tmp_path / "out"
    convert(src, out, maxcount=2, progress=False)
    main(["shards", "verify", str(out), "--quiet"])  # clean: no exit
    shard = out / "train-000001.tar"
    blob = bytearray(shard.read_bytes())
    blob[png_offset(shard) + 200] ^= 0xFF  # inside the first sample's PNG data
    shard.write_bytes(bytes(blob))
    (out / "test-000000.tar").unlink()
    code, err = run_cli(["shards", "verify", str(out), "--quiet"], capsys)
    assert code == 2
    assert "train-000001.tar: sha256 differs" in err
    assert "train-000001.tar: sample 'traj_0_to_255__2': frames do not decode" in err
    assert "test-000000.tar: cannot read" in err
    assert "split 'test' has 0 readable sequences, manifest says 2" in err


def test_verify_detects_count_mismatch_and_bad_manifest(bair_folders, tmp_path):
    src, _ = bair_folders
    out = tmp_path / "out"
    convert(src, out, maxcount=2, progress=False)
    data = json.loads((out / "manifest.json").read_text())
    data["splits"]["train"]["shards"][0]["count"] = 3
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="train-000000.tar: 2 sequences, manifest says 3"):
        verify_shards(str(out), progress=False)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: not valid JSON"):
        verify_shards(str(out), progress=False)


def test_png_strip_windows_decode_exactly_and_other_encoders_fall_back():
    from PIL import Image

    from toolkit.data.shards import png

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (6, 8, 5, 3), dtype=np.uint8)
    ours = png.png_bytes(frames.reshape(48, 5, 3))
    buf = io.BytesIO()
    Image.fromarray(frames.reshape(48, 5, 3)).save(buf, format="PNG")  # Pillow's adaptive row filters
    for data in (ours, buf.getvalue()):
        for start in range(6):
            for count in range(1, 7 - start):
                np.testing.assert_array_equal(png.decode_frames(data, 6, start, count), frames[start:start + count])
    with pytest.raises(ValueError, match="does not hold 7 frames"):
        png.decode_frames(ours, 7, 0, 1)
    flipped = bytearray(ours)
    flipped[60] ^= 0xFF  # inside the IDAT chunk: its CRC no longer matches
    with pytest.raises(ValueError, match="bad CRC in its IDAT chunk"):
        png.decode_frames(bytes(flipped), 6, 0, 1)
    with pytest.raises(ValueError, match="truncated"):
        png.decode_frames(ours[:70], 6, 0, 1)
