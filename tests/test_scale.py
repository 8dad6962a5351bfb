"""Correct at scale: the same numbers on 1 or N ranks, in any precision, across resumes, failures and nodes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from conftest import REPO, accelerate_launch, run_toolkit, tiny_recipe
from toolkit import launcher
from toolkit.config import load_config
from toolkit.eval.report import eval_checkpoint
from toolkit.launcher import free_port
from toolkit.train import loop
from toolkit.train.checkpoint import list_checkpoints, read_checkpoint_meta
from toolkit.train.runlog import read_metrics
from toolkit.train.schedules import teacher_forcing_on


def comparable(run_dir: Path) -> list[dict]:
    """Every record a resumed run must reproduce exactly: all but the measurements and the final summary."""
    return [r for r in read_metrics(run_dir) if r["kind"] in ("step", "epoch", "val")]


def train_in_process(cfg):
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return loop.train(cfg)


@pytest.mark.slow
def test_two_ranks_take_one_teacher_forcing_decision_per_step(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", schedule={"tfr": 0.5},
                         train={"epochs": 1, "epoch_size": 12, "eval_every": 1, "seed": 3})
    proc = subprocess.run(accelerate_launch("-m", "toolkit", "train", str(recipe)), capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]  # e.g. DDP's broadcast_buffers deprecation (torch 2.13)
    steps = read_metrics(tmp_path / "run", "step")
    assert len(steps) == 12 and read_metrics(tmp_path / "run", "final")[-1]["world_size"] == 2
    forced = [r["teacher_forced"] for r in steps]  # the mean over both ranks: 0.5 if they disagreed
    assert set(forced) == {0.0, 1.0}
    assert forced == [float(teacher_forcing_on(3, r["step"] - 1, 0.5)) for r in steps]


def test_validation_is_scored_in_float32_as_cvae_eval_reports(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run",
                         train={"epochs": 1, "epoch_size": 3, "mixed_precision": "bf16"})
    proc = run_toolkit("train", str(recipe))
    assert proc.returncode == 0 and "mixed precision bf16" in proc.stdout, proc.stderr[-3000:]
    val = read_metrics(tmp_path / "run", "val")[-1]
    # cvae eval's default seed is the run's train.seed, so it reproduces the validation; another batch size
    # changes only the float32 summation order (the tolerance of tests/test_eval.py)
    report = eval_checkpoint(tmp_path / "run" / "checkpoints" / "best", pushing_shards, "validate",
                             batch_size=3, out=tmp_path / "e.json", quiet=True)
    assert report["precision"] == "no" and report["count"] == val["count"] == 4 and report["seed"] == 1
    assert report["mean"]["psnr"] == pytest.approx(val["psnr"], abs=1e-5)  # the best checkpoint's own numbers
    assert report["per_frame"]["ssim"] == pytest.approx(val["ssim_per_frame"], abs=1e-6)
    bf16 = eval_checkpoint(tmp_path / "run" / "checkpoints" / "best", pushing_shards, "validate", seed=1,
                           precision="bf16", out=tmp_path / "b.json", quiet=True)
    assert abs(bf16["mean"]["psnr"] - val["psnr"]) > 1e-5  # bf16 would have given other numbers


def test_a_signal_on_the_last_batch_of_an_epoch_defers_its_validation(tmp_path, pushing_shards, monkeypatch):
    path = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "a",
                       train={"epochs": 2, "epoch_size": 3, "eval_every": 1})
    train_in_process(load_config(path))
    calls = {"n": 0}
    real = loop.train_micro_batch

    def signalled(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the last batch of the first epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_micro_batch", signalled)
    stopped = train_in_process(load_config(path, [f"--train.run_dir={tmp_path / 'b'}"]))
    assert stopped["stopped"] and stopped["step"] == 3 and not read_metrics(tmp_path / "b", "val")
    state, _ = read_checkpoint_meta(tmp_path / "b" / "checkpoints" / "epoch_000001")
    assert state.validation_due and state.epoch == 1
    monkeypatch.setattr(loop, "train_micro_batch", real)
    resumed = train_in_process(load_config(path, [f"--train.run_dir={tmp_path / 'b'}", "--train.resume=auto"]))
    assert not resumed["stopped"] and comparable(tmp_path / "b") == comparable(tmp_path / "a")
    assert [r["epoch"] for r in read_metrics(tmp_path / "b", "val")] == [0, 1]
    finals = read_metrics(tmp_path / "b", "final")  # the stopped run's final record gave way to the resumed one's
    assert len(finals) == 1 and not finals[0]["stopped"] and read_metrics(tmp_path / "b")[-1]["kind"] == "final"


def test_missing_splits_and_bad_windows_fail_before_training(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run")
    for args, message in [(["--data.val_split=valid"], "no split 'valid' (have: train, validate, test)"),
                          (["--data.train_split=nope"], "no split 'nope'"),
                          (["--data.n_future=29"], "n_past 2 + n_future 29 = 31 frames do not fit its sequences")]:
        start = time.perf_counter()
        proc = run_toolkit("train", str(recipe), *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert time.perf_counter() - start < 60 and not list_checkpoints(tmp_path / "run")
        assert not read_metrics(tmp_path / "run", "step")


def test_shards_from_tfrecords_get_a_validation_split_carved_from_train(tmp_path):
    from toolkit.data.shards.convert import convert
    from toolkit.data.sources.tfrecord import make_bair_example, write_tfrecord

    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 7), ("test", 2)):
        records = [make_bair_example(torch.randint(0, 256, (30, 64, 64, 3), generator=rng, dtype=torch.uint8).numpy(),
                                     torch.randn(30, 4, generator=rng).numpy(),
                                     torch.randn(30, 3, generator=rng).numpy()) for _ in range(n)]
        write_tfrecord(tmp_path / "src" / split / "traj_0_to_255.tfrecords", records)
    data = convert(tmp_path / "src", tmp_path / "shards", fmt="tfrecord", maxcount=2, val_from_train=3,
                   progress=False)
    assert {s: e["count"] for s, e in data["splits"].items()} == {"train": 4, "validate": 3, "test": 2}
    from toolkit.data.loader import eval_loader
    keys = [k for b in eval_loader(str(tmp_path / "shards"), "validate", 8, 12, num_workers=0) for k in b.keys]
    assert keys == [f"traj_0_to_255__{i}" for i in (4, 5, 6)]  # the last three, in source order
    again = convert(tmp_path / "src", tmp_path / "shards2", fmt="tfrecord", maxcount=2, val_from_train=3,
                    progress=False)
    assert [s["sha256"] for s in again["splits"]["validate"]["shards"]] == \
        [s["sha256"] for s in data["splits"]["validate"]["shards"]]
    proc = run_toolkit("shards", "convert", str(tmp_path / "src"), str(tmp_path / "bad"), "--format", "tfrecord",
                       "--val-from-train", "7")
    assert proc.returncode == 2 and "none left for training" in proc.stderr and not (tmp_path / "bad").exists()


def test_resume_skips_a_corrupt_newest_checkpoint_and_refuses_a_corrupt_path(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", train={"epochs": 2, "epoch_size": 2})
    assert run_toolkit("train", str(recipe)).returncode == 0
    newest = tmp_path / "run" / "checkpoints" / "epoch_000002"
    weights = newest / "model.safetensors"
    recorded = json.loads((newest / "train_state.json").read_text())["files"]["model.safetensors"]["bytes"]
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as by a full disk
    corrupt = tmp_path / "corrupt"
    shutil.copytree(newest, corrupt)
    proc = run_toolkit("train", str(recipe), "--train.resume=auto", "--train.epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping checkpoint epoch_000002" in proc.stderr and "truncated" in proc.stderr
    assert "resuming from" in proc.stdout and "epoch_000001" in proc.stdout
    assert read_metrics(tmp_path / "run", "final")[-1]["epoch"] == 3
    proc = run_toolkit("train", str(recipe), "--train.epochs=4", f"--train.resume={corrupt}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: cannot resume from {corrupt}: {corrupt}/model.safetensors: "
                                                f"1000 bytes, {recorded} recorded (truncated or replaced)"]


def test_resume_finds_a_checkpoint_a_kill_left_moved_aside_and_names_changed_settings(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", train={"epochs": 1, "epoch_size": 2})
    assert run_toolkit("train", str(recipe)).returncode == 0
    root = tmp_path / "run" / "checkpoints"
    for name in ("best", "epoch_000001"):  # killed inside fsutil.replace_dir, between its two renames
        holder = root / f".tmp-{name}.old.abc"
        holder.mkdir()
        (root / name).rename(holder / name)
    proc = run_toolkit("train", str(recipe), "--train.resume=auto", "--train.epochs=2", "--optim.lr=0.001")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stdout and "epoch_000001" in proc.stdout  # not a fresh start
    assert "other values of optim.lr, train.epochs: the continuation is not exact" in proc.stderr
    assert [r["epoch"] for r in read_metrics(tmp_path / "run", "epoch")] == [0, 1]  # 0-based
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    # a mid-epoch checkpoint (as a stop after batch 3 of 4 leaves) that a shorter epoch cannot continue
    mid = root / "epoch_000002_step_000003"
    shutil.copytree(root / "epoch_000002", mid)
    payload = json.loads((mid / "train_state.json").read_text())
    payload["train_state"].update(epoch=2, step_in_epoch=3)
    (mid / "train_state.json").write_text(json.dumps(payload))
    proc = run_toolkit("train", str(recipe), "--train.epochs=3", f"--train.resume={mid}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        f"error: {mid} stopped after batch 3 of an epoch, which does not fit train.epoch_size=2 with "
        "optim.grad_accum=1; resume with the values it was trained with")


@pytest.mark.slow
def test_resuming_on_another_world_size_says_it_is_not_exact(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", train={"epochs": 1, "epoch_size": 2})
    assert run_toolkit("train", str(recipe)).returncode == 0
    _, meta = read_checkpoint_meta(tmp_path / "run" / "checkpoints" / "epoch_000001")
    assert meta["world_size"] == 1 and meta["mixed_precision"] == "no"
    proc = subprocess.run(accelerate_launch("-m", "toolkit", "train", str(recipe), "--train.resume=auto",
                                            "--train.epochs=2"), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "saved by 1 process(es), this run has 2: the continuation is not exact" in proc.stderr
    assert "holds no RNG state for rank 1" in proc.stderr


@pytest.mark.parametrize("gpus,bf16,expected", [
    (0, False, ("cpu.yaml", [])), (1, True, ("gpu1_bf16.yaml", [])), (1, False, ("gpu1_fp16.yaml", [])),
    (4, True, ("node8_bf16.yaml", ["--num_processes", "4"])),
    (8, False, ("node8_fp16.yaml", ["--num_processes", "8"]))])
def test_launcher_uses_every_gpu_and_fp16_without_bf16(monkeypatch, gpus, bf16, expected):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    config, extra = launcher.machine_config()
    assert (Path(config).name, extra) == expected and (REPO / config).is_file()
    if gpus:  # several nodes: a distributed config even with one GPU each
        config, extra = launcher.machine_config(nodes=2)
        assert Path(config).name == f"multinode_{'bf16' if bf16 else 'fp16'}.yaml" and (REPO / config).is_file()


def test_launcher_multinode_arguments_and_errors(monkeypatch):
    monkeypatch.chdir(REPO)
    env = {"NNODES": "2", "GPUS_PER_NODE": "4", "MACHINE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    assert launcher.launch_args("recipes/accelerate/multinode_bf16.yaml", env) == [
        "--config_file", "recipes/accelerate/multinode_bf16.yaml", "--num_machines", "2", "--num_processes", "8",
        "--machine_rank", "1", "--main_process_ip", "10.0.0.1", "--main_process_port", "1234"]
    with pytest.raises(KeyError, match="MASTER_ADDR"):
        launcher.launch_args("recipes/accelerate/cpu.yaml", {"NNODES": "2", "MACHINE_RANK": "0"})
    args = launcher.launch_args("recipes/accelerate/cpu.yaml", {})
    assert args[:2] == ["--config_file", "recipes/accelerate/cpu.yaml"] and args[2] == "--main_process_port"


@pytest.mark.slow
def test_two_node_launch_on_localhost_keeps_ranks_identical(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", train={"epochs": 1, "epoch_size": 3})
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "NNODES": "2",
           "GPUS_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           # accelerate gives each "node" every physical core; two of them on one machine oversubscribe it, and
           # libgomp's spinning barriers then run the step orders of magnitude slower
           "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(["./launch.sh", str(recipe), "recipes/accelerate/cpu.yaml"], cwd=REPO,
                              env={**env, "MACHINE_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    final = read_metrics(tmp_path / "run", "final")[-1]
    assert final["world_size"] == 2 and final["step"] == 3
    assert len(final["param_checksums"]) == 2 and final["param_checksums"][0] == final["param_checksums"][1]
    assert "final validation PSNR" in outputs[0][0]


def test_checkpoints_hold_batchnorm_statistics_reestimated_without_changing_training(tmp_path, pushing_shards):
    from safetensors.torch import load_file

    from toolkit.data.loader import train_loader
    from toolkit.train.batchnorm import batchnorm_seed
    from toolkit.train.checkpoint import load_model

    runs = {}
    for n in (0, 3):
        recipe = tiny_recipe(tmp_path / f"r{n}.yaml", pushing_shards, tmp_path / f"bn{n}",
                             train={"epochs": 2, "epoch_size": 3, "eval_every": 1, "bn_batches": n})
        assert run_toolkit("train", str(recipe)).returncode == 0
        runs[n] = [r for r in comparable(tmp_path / f"bn{n}") if r["kind"] != "val"]
    assert runs[0] == runs[3]  # training never reads the running statistics, and the RNG streams are untouched
    ckpt = tmp_path / "bn3" / "checkpoints" / "epoch_000002"
    model, cfg, _ = load_model(ckpt)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    torch.manual_seed(batchnorm_seed(1, 2))

    def stats() -> dict:
        return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}

    estimates = []
    with torch.no_grad():  # the estimate, recomputed: the average over 3 batches of the stream (seed, -1 - epoch)
        for batch in train_loader(pushing_shards, "train", 2, 3, 12, seed=1, epoch=-3, num_workers=0,
                                  shuffle_buffer=4):
            model(*batch.to("cpu"), True, 0.0)
            estimates.append(stats())
    saved = load_file(ckpt / "model.safetensors")

    def largest_difference(estimate: dict) -> float:
        """Largest |saved - estimate| over a layer's statistics, relative to the layer's largest statistic.

        float32 statistics summed in another order (batch split, the CPU's vector width: AVX-512 and AVX2
        differ) agree to about log2(N) * 2^-24 (N = B*H*W values per channel) of the summands' size, not of
        the result's: a mean that cancels to ~0 keeps an absolute error of that size, so the tolerance is
        relative to the layer's scale. Measured 1.9e-6 on an AVX-512 CPU; other batches differ by far more."""
        return max((saved[k] - v).abs().max().item() / v.abs().max().item() for k, v in estimate.items())

    assert len(estimates) == 3 and largest_difference(estimates[2]) < 1e-5
    assert largest_difference(estimates[1]) > 1e-3  # the average of 2 batches instead of 3: the tolerance sees it
    assert not torch.equal(saved["encoder.c1.0.1.running_mean"],
                           load_file(tmp_path / "bn0" / "checkpoints" / "epoch_000002" / "model.safetensors")[
                               "encoder.c1.0.1.running_mean"])


@pytest.mark.parametrize("loss_was_bad", [True, False])
def test_a_non_finite_loss_does_not_halve_the_fp16_loss_scale(loss_was_bad):
    from toolkit.train.step import scale_kept_if

    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(param.sum() * float("nan")).backward()
    with scale_kept_if(scaler, torch.tensor(loss_was_bad)):
        scaler.step(optimizer)
        scaler.update()
    assert torch.equal(param.detach(), torch.ones(3))  # skipped either way
    assert scaler.get_scale() == (1024.0 if loss_was_bad else 512.0)  # an overflow alone halves it
