"""On a CUDA GPU (skipped without one; `benchmarks/gpu_check.sh` runs them): bf16 and fp16 training, 1-GPU DDP
through accelerate, and evaluation on the GPU agreeing with the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, run_toolkit, tiny_recipe
from toolkit.train.checkpoint import read_checkpoint_meta
from toolkit.train.runlog import read_metrics

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_the_gpu(tmp_path, pushing_shards, precision):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run",
                         train={"epochs": 2, "epoch_size": 6, "eval_every": 1, "mixed_precision": precision})
    proc = run_toolkit("train", str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on cuda" in proc.stdout and f"mixed precision {precision}" in proc.stdout
    steps = read_metrics(tmp_path / "run", "step")
    assert len(steps) == 12 and all(np.isfinite([r["loss"], r["mse"], r["kld"]]).all() for r in steps)
    assert np.mean([r["mse"] for r in steps[-3:]]) < np.mean([r["mse"] for r in steps[:3]])  # it learns
    ckpt = tmp_path / "run" / "checkpoints" / "epoch_000002"
    _, meta = read_checkpoint_meta(ckpt)
    assert meta["mixed_precision"] == precision and ("scaler.pt" in meta["files"]) == (precision == "fp16")
    assert read_metrics(tmp_path / "run", "final")[-1]["nonfinite"] == 0


def test_one_gpu_ddp_through_accelerate(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", train={"epochs": 1, "epoch_size": 4})
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
           str(REPO / "recipes" / "accelerate" / "node8_bf16.yaml"), "--num_processes", "1", "-m", "toolkit",
           "train", str(recipe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on cuda" in proc.stdout and "MULTI_GPU" in proc.stdout  # a DistributedDataParallel model
    assert read_metrics(tmp_path / "run", "final")[-1]["step"] == 4


def test_eval_on_the_gpu_agrees_with_the_cpu(tiny_run, pushing_shards, tmp_path):
    ckpt = tiny_run / "checkpoints" / "best"
    reports = {}
    for device, env in (("cuda", {}), ("cpu", {"CUDA_VISIBLE_DEVICES": ""})):
        proc = run_toolkit("eval", str(ckpt), "--shards", pushing_shards, "--split", "test", "--samples", "3",
                           "--json", str(tmp_path / f"{device}.json"), env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports[device] = json.loads((tmp_path / f"{device}.json").read_text())
    gap = np.abs(np.subtract(reports["cuda"]["per_sequence"]["psnr"], reports["cpu"]["per_sequence"]["psnr"]))
    print(f"largest per-sequence PSNR difference, GPU vs CPU: {gap.max():.2e} dB")
    assert gap.max() < 1e-3  # float32 on both (no TF32): rounding only
    assert f"{reports['cuda']['mean']['psnr']:.2f}" == f"{reports['cpu']['mean']['psnr']:.2f}"
