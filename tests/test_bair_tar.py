"""BAIR's tar converted as a stream (file, stdin, http, gzip), equal to its extracted folder; --workers; bad tars."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import random
import re
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from toolkit.cli import main
from toolkit.data.shards.convert import convert
from toolkit.data.sources import tfrecord

from conftest import random_sequence, run_toolkit, write_bair_folders

# (split, first index of the file, records): BAIR's naming, files of different lengths
FILES = [("train", 0, 3), ("train", 256, 2), ("train", 1024, 2), ("train", 512, 1), ("test", 0, 2), ("test", 256, 1)]
ROOT = "softmotion30_44k"


def write_tree(src: Path, seed: int = 0) -> int:
    """BAIR's layout under src/softmotion30_44k (plus a README file that is no split); returns the record count."""
    rng = np.random.default_rng(seed)
    for split, start, n in FILES:
        records = [tfrecord.make_bair_example(*random_sequence(rng)) for _ in range(n)]
        tfrecord.write_tfrecord(src / ROOT / split / f"traj_{start}_to_{start + 255}.tfrecords", records)
    (src / ROOT / "README").write_text("not a split\n")
    return sum(n for _, _, n in FILES)


def make_tar(src: Path, path: Path, shuffle: int | None = 0, mode: str = "w") -> list[str]:
    """Tar the tree, directories and files; returns the member names. shuffle None: sorted paths; 0: test before
    train and names compared as strings (traj_1024 before traj_256, as `tar` of a sorted listing writes them);
    N > 0: a random order."""
    members = sorted(src.rglob("*"))
    if shuffle == 0:
        members.sort(key=lambda p: ("train" in p.parts, p.name))
    elif shuffle is not None:
        random.Random(shuffle).shuffle(members)
    with tarfile.open(path, mode) as tar:
        for m in members:
            tar.add(m, arcname=m.relative_to(src).as_posix(), recursive=False)
    return [m.relative_to(src).as_posix() for m in members]


def assert_same_shards(a: Path, b: Path) -> None:
    """Byte-identical shards and manifests (but for the manifest's record of the source path)."""
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma.pop("source")["format"] == mb.pop("source")["format"] == "tfrecord"
    assert ma == mb
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) > 2
    for name in names:
        if name != "manifest.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def serve(directory: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_tar_gives_the_shards_of_its_extracted_folder(tmp_path):
    records = write_tree(tmp_path / "src")
    names = make_tar(tmp_path / "src", tmp_path / "bair.tar")
    position = {n: i for i, n in enumerate(names)}
    assert position[f"{ROOT}/train/traj_1024_to_1279.tfrecords"] < position[f"{ROOT}/train/traj_256_to_511.tfrecords"]
    assert position[f"{ROOT}/test/traj_0_to_255.tfrecords"] < position[f"{ROOT}/train/traj_0_to_255.tfrecords"]
    make_tar(tmp_path / "src", tmp_path / "bair.tar.gz", shuffle=2, mode="w:gz")
    args = dict(fmt="tfrecord", maxcount=3, val_from_train=2, progress=False)
    folder = convert(tmp_path / "src" / ROOT, tmp_path / "folder", **args)
    assert {s: e["count"] for s, e in folder["splits"].items()} == {"train": 6, "validate": 2, "test": 3}
    assert sum(e["count"] for e in folder["splits"].values()) == records
    convert(tmp_path / "bair.tar", tmp_path / "file", **args)
    assert_same_shards(tmp_path / "folder", tmp_path / "file")
    convert(tmp_path / "bair.tar.gz", tmp_path / "gz", **args)
    assert_same_shards(tmp_path / "folder", tmp_path / "gz")
    with open(tmp_path / "bair.tar", "rb") as stdin:
        proc = run_toolkit("shards", "convert", "-", str(tmp_path / "stdin"), "--format", "tfrecord", "--maxcount",
                           "3", "--val-from-train", "2", "--quiet", stdin=stdin)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_shards(tmp_path / "folder", tmp_path / "stdin")
    server = serve(tmp_path)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/bair.tar"
        assert convert(url, tmp_path / "http", **args)["source"]["path"] == url
        assert_same_shards(tmp_path / "folder", tmp_path / "http")
    finally:
        server.shutdown()
        server.server_close()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_workers_give_the_shards_of_one_worker(tmp_path):
    records = write_tree(tmp_path / "src")
    make_tar(tmp_path / "src", tmp_path / "bair.tar")
    write_bair_folders(tmp_path / "folders", {"train": 7, "test": 3}, seed=2)
    for src, fmt, count in ((tmp_path / "bair.tar", "tfrecord", records),
                            (tmp_path / "src" / ROOT, "tfrecord", records), (tmp_path / "folders", "folders", 10)):
        one = convert(src, tmp_path / f"{fmt}-{src.name}-1", fmt=fmt, maxcount=2, progress=False)
        two = convert(src, tmp_path / f"{fmt}-{src.name}-2", fmt=fmt, maxcount=2, progress=False, workers=2)
        assert one == two and sum(e["count"] for e in one["splits"].values()) == count
        listing = [sorted(p.name for p in (tmp_path / f"{fmt}-{src.name}-{n}").iterdir()) for n in (1, 2)]
        assert listing[0] == listing[1] and all(name.endswith((".tar", ".json")) for name in listing[1])
        for split in one["splits"].values():
            for shard in split["shards"]:
                assert (tmp_path / f"{fmt}-{src.name}-1" / shard["name"]).read_bytes() == \
                       (tmp_path / f"{fmt}-{src.name}-2" / shard["name"]).read_bytes()


def test_the_progress_bar_counts_sequences_with_an_eta(tmp_path, capsys):
    write_tree(tmp_path / "src")
    make_tar(tmp_path / "src", tmp_path / "bair.tar")
    main(["shards", "convert", str(tmp_path / "bair.tar"), str(tmp_path / "out"), "--format", "tfrecord"])
    err = capsys.readouterr().err
    # tqdm: percentage, bytes read of the tar's size, [elapsed<remaining, rate, sequences so far]
    assert re.search(r"converting: 100%\|.*\| [\d.]+M/[\d.]+M \[\d\d:\d\d<\d\d:\d\d, .*, 11 seq\]", err), err[-500:]
    assert re.search(r"writing shards: 100%\|.*\| 11/11 \[\d\d:\d\d<\d\d:\d\d", err), err[-500:]


def _layout(tar: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tar) as t:
        return {m.name: m for m in t.getmembers()}


def _record_offsets(path: Path) -> list[int]:
    return [offset for _, offset, _ in tfrecord.read_records(open(path, "rb"), str(path), path.stat().st_size)]


MEMBER = f"{ROOT}/train/traj_256_to_511.tfrecords"  # NEXT follows it in the unshuffled (sorted) tar
NEXT = f"{ROOT}/train/traj_512_to_767.tfrecords"


def _cut(tar, layout, offsets):  # inside record 1 of MEMBER
    return tar[:layout[MEMBER].offset_data + offsets[1] + 500]


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:]


@pytest.mark.parametrize("damage, message", [
    (_cut, "{tar}:" + MEMBER + " record 1: the tar ends inside this member (truncated"),
    (lambda tar, layout, offsets: tar[:layout[NEXT].offset],
     "{tar}: the tar ends at byte {next} without its end-of-archive marker (truncated), after member " + MEMBER),
    (lambda tar, layout, offsets: tar[:layout[NEXT].offset + 200],
     "{tar}: the tar ends at byte {next} without its end-of-archive marker (truncated), after member " + MEMBER),
    (lambda tar, layout, offsets: _flip(tar, layout[NEXT].offset + 3),
     "{tar}: corrupt tar header at byte {next} (bad checksum), after member " + MEMBER),
    (lambda tar, layout, offsets: _flip(tar, layout[MEMBER].offset_data + offsets[1] + 2000),
     "{tar}:" + MEMBER + " record 1 at byte {rec1}: bad data CRC (corrupt record of"),
    (lambda tar, layout, offsets: b"this is not a tar file" * 40, "{tar}: not a readable tar archive"),
])
def test_a_truncated_or_corrupt_tar_is_one_line_naming_member_and_record(tmp_path, capsys, damage, message):
    write_tree(tmp_path / "src")
    make_tar(tmp_path / "src", tmp_path / "good.tar", shuffle=None)
    layout, offsets = _layout(tmp_path / "good.tar"), _record_offsets(tmp_path / "src" / MEMBER)
    tar = tmp_path / "bad.tar"
    tar.write_bytes(damage((tmp_path / "good.tar").read_bytes(), layout, offsets))
    for workers in ("1", "2"):
        with pytest.raises(SystemExit) as exit_:
            main(["shards", "convert", str(tar), str(tmp_path / "out"), "--format", "tfrecord", "--quiet",
                  "--workers", workers])
        lines = capsys.readouterr().err.strip().splitlines()
        expected = message.format(tar=tar, next=layout[NEXT].offset, rec1=offsets[1])
        assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines
        assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_record_that_is_not_bairs_names_member_and_record(tmp_path, capsys):
    write_tree(tmp_path / "src")
    path = tmp_path / "src" / MEMBER
    frames, actions, positions = random_sequence(np.random.default_rng(5))
    good = tfrecord.make_bair_example(frames, actions, positions)
    features = tfrecord.parse_example(good)
    del features["3/action"]
    tfrecord.write_tfrecord(path, [good, tfrecord.encode_example(features)])
    make_tar(tmp_path / "src", tmp_path / "bair.tar")
    for workers in ("1", "2"):
        with pytest.raises(SystemExit) as exit_:
            main(["shards", "convert", str(tmp_path / "bair.tar"), str(tmp_path / "out"), "--format", "tfrecord",
                  "--quiet", "--workers", workers])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and lines == [f"error: {tmp_path / 'bair.tar'}:{MEMBER}#1: missing feature "
                                                   f"'3/action'"]
        assert not (tmp_path / "out").exists()


def test_members_twice_or_under_two_roots_and_tars_without_tfrecords(tmp_path, capsys):
    write_tree(tmp_path / "src")
    (tmp_path / "src" / "other" / "train").mkdir(parents=True)
    (tmp_path / "src" / ROOT / "train" / "traj_0_to_255.tfrecords").rename(
        tmp_path / "src" / "other" / "train" / "traj_0_to_255.tfrecords")
    make_tar(tmp_path / "src", tmp_path / "two.tar", shuffle=None)
    with tarfile.open(tmp_path / "twice.tar", "w") as tar:
        for _ in range(2):
            tar.add(tmp_path / "src" / MEMBER, arcname=MEMBER)
    with tarfile.open(tmp_path / "none.tar", "w:gz") as tar:
        tar.add(tmp_path / "src" / ROOT / "README", arcname="README")
    for name, expected in (("two", "TFRecords under two roots"), ("twice", f"member {MEMBER} appears twice"),
                           ("none", "no TFRecord members (expected e.g. softmotion30_44k/train/")):
        with pytest.raises(SystemExit) as exit_:
            main(["shards", "convert", str(tmp_path / f"{name}.tar"), str(tmp_path / "out"), "--format",
                  "tfrecord", "--quiet"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    gz = gzip.compress((tmp_path / "two.tar").read_bytes())[:-5000]  # a cut-off download of a .tar.gz
    (tmp_path / "cut.tar.gz").write_bytes(gz)
    with pytest.raises(SystemExit):
        main(["shards", "convert", str(tmp_path / "cut.tar.gz"), str(tmp_path / "out"), "--format", "tfrecord",
              "--quiet"])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'cut.tar.gz'}") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
