"""The shard loader: exact batch counts, determinism per (seed, epoch, rank), rank splits, windows, URLs."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
import torch

from toolkit.cli import error_message
from toolkit.data.loader import eval_loader, train_loader
from toolkit.data.shards.manifest import read_manifest
from toolkit.data.shards.convert import convert
from toolkit.errors import DataError

from conftest import png_offset, run_toolkit, tiny_recipe, write_bair_folders
from toolkit.train.runlog import read_metrics


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[str, dict]:
    root = tmp_path_factory.mktemp("loader")
    expected = write_bair_folders(root / "src", {"train": 12, "validate": 7}, seed=1)
    convert(root / "src", root / "shards", maxcount=3, progress=False)  # 4 train shards, 3 validate shards
    return str(root / "shards"), expected


def collect(loader) -> list:
    return [b for b in loader]


def test_train_loader_yields_exactly_n_batches_of_the_right_shape(shards):
    location, _ = shards
    batches = collect(train_loader(location, "train", batch_size=4, n_batches=7, window=12, seed=0, epoch=0,
                                   num_workers=2, shuffle_buffer=8))
    assert len(batches) == 7  # more batches than the split holds: the stream is resampled
    for b in batches:
        assert b.frames.shape == (4, 12, 3, 64, 64) and b.frames.dtype == torch.uint8
        frames, cond = b.to("cpu")
        assert frames.dtype == torch.float32 and torch.equal(frames, b.frames.float() / 255)
        assert torch.equal(cond, b.cond)
        assert b.cond.shape == (4, 12, 7) and len(b.keys) == 4


def test_train_stream_is_deterministic_per_seed_epoch_rank(shards):
    location, _ = shards
    make = functools.partial(train_loader, location, "train", batch_size=3, n_batches=5, window=12, seed=7,
                             num_workers=2, shuffle_buffer=6)
    a, b, c = collect(make(epoch=3)), collect(make(epoch=3)), collect(make(epoch=4))
    assert [x.keys for x in a] == [x.keys for x in b]
    assert all(torch.equal(x.frames, y.frames) and torch.equal(x.cond, y.cond) for x, y in zip(a, b))
    assert [x.keys for x in a] != [x.keys for x in c]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_ranks_get_disjoint_shards_and_equal_batch_counts(shards, num_workers):
    location, expected = shards
    m = read_manifest(location)
    per_rank = []
    for rank in (0, 1):
        batches = collect(train_loader(m, "train", batch_size=2, n_batches=9, window=12, seed=0, epoch=0, rank=rank,
                                       world_size=2, num_workers=num_workers, shuffle_buffer=4))
        per_rank.append(batches)
    assert len(per_rank[0]) == len(per_rank[1]) == 9
    keys0 = {k for b in per_rank[0] for k in b.keys}
    keys1 = {k for b in per_rank[1] for k in b.keys}
    assert keys0 and keys1 and not keys0 & keys1
    assert keys0 | keys1 <= set(expected["train"])


def test_fewer_shards_than_ranks_warns_but_keeps_batch_counts_equal(tmp_path):
    write_bair_folders(tmp_path / "src", {"train": 2}, seed=2)
    convert(tmp_path / "src", tmp_path / "out", maxcount=8, progress=False)
    with pytest.warns(UserWarning, match="every rank resamples all shards"):
        counts = [len(collect(train_loader(str(tmp_path / "out"), "train", 2, 4, 12, seed=0, epoch=0, rank=r,
                                           world_size=2, num_workers=0, shuffle_buffer=2))) for r in (0, 1)]
    assert counts == [4, 4]


@pytest.mark.parametrize("world_size,num_workers", [(1, 2), (2, 0), (3, 2)])
def test_eval_split_covers_every_sequence_exactly_once(shards, world_size, num_workers):
    location, expected = shards
    seen = []
    for rank in range(world_size):
        for b in eval_loader(location, "validate", batch_size=2, window=12, rank=rank, world_size=world_size,
                             num_workers=num_workers):
            seen += b.keys
    assert sorted(seen) == sorted(expected["validate"])


def test_eval_limit_takes_the_first_sequences_in_manifest_order(shards):
    location, expected = shards
    seen = [k for r in (0, 1) for b in eval_loader(location, "validate", 2, 12, rank=r, world_size=2, limit=4)
            for k in b.keys]
    assert sorted(seen) == sorted(list(expected["validate"])[:4])


def test_eval_window_is_the_first_frames(shards):
    location, expected = shards
    for b in eval_loader(location, "validate", batch_size=7, window=12, num_workers=0):
        for key, frames, cond in zip(b.keys, b.frames, b.cond):
            src_frames, src_cond = expected["validate"][key]
            np.testing.assert_array_equal(frames.permute(0, 2, 3, 1).numpy(), src_frames[:12])
            np.testing.assert_array_equal(cond.numpy(), src_cond[:12])


def test_random_windows_are_contiguous_slices_at_varying_offsets(shards):
    location, expected = shards
    offsets = set()
    for b in train_loader(location, "train", batch_size=4, n_batches=6, window=12, seed=0, epoch=0, num_workers=0,
                          random_window=True):
        for key, cond in zip(b.keys, b.cond):
            src = expected["train"][key][1]
            starts = [s for s in range(30 - 12 + 1) if np.array_equal(src[s:s + 12], cond.numpy())]
            assert len(starts) == 1
            offsets.add(starts[0])
    assert len(offsets) > 3


def test_use_cond_false_gives_empty_cond(shards):
    location, _ = shards
    b = next(iter(eval_loader(location, "validate", 2, 12, use_cond=False)))
    assert b.cond.shape == (2, 12, 0)


def test_window_longer_than_sequences_is_an_error(shards):
    with pytest.raises(DataError, match="window of 31 frames"):
        eval_loader(shards[0], "validate", 2, 31)


def test_unknown_split_names_the_manifest(shards):
    with pytest.raises(DataError, match=r"manifest.json: no split 'nope' \(have: train, validate\)"):
        eval_loader(shards[0], "nope", 2, 12)


def _keys_and_frames(loader) -> dict[str, torch.Tensor]:
    return {k: f for b in loader for k, f in zip(b.keys, b.frames)}


def test_loader_reads_over_http_from_a_local_server(shards):
    location, _ = shards
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=location)
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert read_manifest(url).data == read_manifest(location).data
        remote = _keys_and_frames(eval_loader(url, "validate", 3, 12, num_workers=2))
        local = _keys_and_frames(eval_loader(location, "validate", 3, 12, num_workers=0))
        assert sorted(remote) == sorted(local)
        assert all(torch.equal(remote[k], local[k]) for k in local)
        batches = collect(train_loader(url, "train", 2, 3, 12, seed=0, epoch=0, num_workers=1))
        assert len(batches) == 3
        with pytest.raises(DataError, match="cannot read the shard manifest"):
            read_manifest(url + "/missing")
    finally:
        server.shutdown()
        server.server_close()


def test_loader_reads_pipe_urls(shards):
    location, _ = shards
    template = f"pipe:cat {location}/{{name}}"
    piped = _keys_and_frames(eval_loader(template, "validate", 3, 12, num_workers=0))
    local = _keys_and_frames(eval_loader(location, "validate", 3, 12, num_workers=0))
    assert sorted(piped) == sorted(local) and all(torch.equal(piped[k], local[k]) for k in local)
    assert read_manifest(template).data == read_manifest(location).data  # the manifest comes through the pipe too
    with pytest.raises(DataError) as e:
        read_manifest(f"pipe:cat {location}/nowhere/{{name}}")
    assert str(e.value) == (f"pipe:cat {location}/nowhere/manifest.json: cannot read the shard manifest (the command "
                            f"exited with status 1: cat: {location}/nowhere/manifest.json: No such file or directory)")


def test_training_streams_pipe_shards_manifest_included(tmp_path, pushing_shards):
    """docs/data.md's object-storage recipe with `cat` standing in for `aws s3 cp ... -` / `gsutil cat`."""
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", train={"epochs": 1, "epoch_size": 2})
    proc = run_toolkit("train", str(recipe), f"--data.shards=pipe:cat {pushing_shards}/{{name}}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = read_metrics(tmp_path / "run", "final")[-1]
    assert final["step"] == 2 and read_metrics(tmp_path / "run", "val")[-1]["count"] == 4
    assert "pipe:cat" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_sample_raises_data_error_naming_shard(tmp_path, num_workers):
    write_bair_folders(tmp_path / "src", {"train": 2}, seed=4)
    convert(tmp_path / "src", tmp_path / "out", progress=False)
    shard = tmp_path / "out" / "train-000000.tar"
    blob = bytearray(shard.read_bytes())
    start = png_offset(shard) + 100
    blob[start:start + 300] = bytes(300)  # wipe part of the first sample's PNG data
    shard.write_bytes(bytes(blob))
    with pytest.raises(DataError) as e:
        collect(eval_loader(str(tmp_path / "out"), "train", 2, 12, num_workers=num_workers))
    # From a worker process the error carries the worker's traceback; the CLI shows only the cause.
    expected = "corrupt PNG (bad CRC in its IDAT chunk)"
    assert error_message(e.value) == f"{shard}: sample 'traj_0_to_255__0': {expected}"


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_unreadable_or_missing_shard_is_a_data_error_naming_it(tmp_path, damage):
    write_bair_folders(tmp_path / "src", {"train": 2}, seed=5)
    convert(tmp_path / "src", tmp_path / "out", progress=False)
    shard = tmp_path / "out" / "train-000000.tar"
    if damage == "garbage":
        shard.write_bytes(b"this is not a tar file" * 100)
    else:
        shard.unlink()
    for make in (lambda: eval_loader(str(tmp_path / "out"), "train", 2, 12, num_workers=0),
                 lambda: train_loader(str(tmp_path / "out"), "train", 2, 3, 12, seed=0, epoch=0, num_workers=1)):
        with pytest.raises(DataError) as e:
            collect(make())
        assert error_message(e.value).startswith(f"{shard}: unreadable shard")
