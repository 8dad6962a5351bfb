"""`cvae eval`: numbers equal a direct computation, 2 ranks see every sequence once, safe and clear loading."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, TINY_MODEL, accelerate_launch, run_toolkit, tiny_recipe
from toolkit.train.checkpoint import load_model
from toolkit.config import ModelConfig
from toolkit.data.shards.manifest import read_manifest
from toolkit.eval.report import eval_checkpoint
from toolkit.eval.evaluate import batch_noise
from toolkit.fsutil import file_sha256
from toolkit.model import SVG


def split_in_manifest_order(shards: str, split: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(keys, frames [N,T,3,64,64] in [0,1], cond [N,T,7]) read straight from the tars, not via the loader."""
    keys, frames, cond = [], [], []
    for url in read_manifest(shards).urls(split):
        with tarfile.open(url) as tar:
            entries = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name in sorted(n for n in entries if n.endswith(".frames.png")):
            key = name.split(".")[0]
            from PIL import Image
            strip = np.asarray(Image.open(io.BytesIO(entries[name])))
            keys.append(key)
            frames.append(torch.from_numpy(strip.reshape(30, 64, 64, 3).copy()).permute(0, 3, 1, 2).float() / 255)
            cond.append(torch.from_numpy(np.load(io.BytesIO(entries[f"{key}.cond.npy"]))))
    return keys, torch.stack(frames), torch.stack(cond)


def numpy_psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The lab's finn_psnr per channel, averaged over channels: [N, T, C, H, W] -> [N, T]."""
    mse = ((pred.astype(np.float64) - target.astype(np.float64)) ** 2).mean(axis=(3, 4))
    return (20 * np.log10(1.0) - 10 * np.log10(mse)).mean(axis=2)


def test_eval_numbers_equal_a_direct_computation(tiny_run, pushing_shards, tmp_path):
    ckpt = tiny_run / "checkpoints" / "best"
    report = eval_checkpoint(ckpt, pushing_shards, "test", samples=3, batch_size=64, seed=7, out=tmp_path / "r.json",
                             quiet=True)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    keys, frames, cond = split_in_manifest_order(pushing_shards, "test")
    assert report["keys"] == sorted(keys) and report["count"] == 5 and report["samples"] == 3
    model, _, _ = load_model(ckpt)
    model = model.to(memory_format=torch.channels_last)  # as eval_checkpoint does (train.channels_last)
    past, future = frames[:, :2], frames[:, 2:12]
    preds = [model.generate(past, cond[:, :12], 10, batch_noise(model, keys, 7, s, 10)).numpy() for s in range(3)]
    psnr = np.stack([numpy_psnr(p, future.numpy()) for p in preds])  # [3, N, T]
    best = psnr[psnr.mean(axis=2).argmax(axis=0), np.arange(5)]
    baseline = numpy_psnr(np.repeat(past[:, 1:2].numpy(), 10, axis=1), future.numpy())
    order = np.argsort(keys)
    # cvae eval generates the 3 samples of the 5 videos in one call of 15 rows, here 5 at a time: a float32
    # convolution sums in an order that depends on the batch, which moves PSNR by ~1e-9 relative (1e-10 when
    # both called the model alike); the baseline involves no model and stays exact
    np.testing.assert_allclose(report["per_frame"]["psnr"], best[order].mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(report["per_frame"]["psnr_mean"], psnr.mean(axis=0).mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(report["per_frame"]["baseline_psnr"], baseline.mean(axis=0), rtol=1e-10)
    assert report["mean"]["psnr"] == pytest.approx(best.mean(), rel=1e-7)
    assert report["mean"]["psnr"] >= report["mean"]["psnr_mean"]  # best-of-N can only be better
    # motion-region PSNR: the pixels where the ground truth differs from the last context frame by > 0.05
    moving = (np.abs(future.numpy() - past[:, 1:2].numpy()) > 0.05).any(axis=2)  # [N, T, H, W]
    assert 0 < moving.mean() < 0.5  # the arm and the pushed objects, not the whole frame
    chosen = np.stack(preds)[psnr.mean(axis=2).argmax(axis=0), np.arange(5)].astype(np.float64)  # best by PSNR
    truth = future.numpy().astype(np.float64)
    expected = np.full((5, 10), np.nan)
    for n in range(5):
        for t in range(10):
            if moving[n, t].any():
                mse = ((chosen[n, t] - truth[n, t]) ** 2)[:, moving[n, t]].mean(axis=1)
                expected[n, t] = np.mean(-10 * np.log10(np.maximum(mse, 1e-10)))
    np.testing.assert_allclose(report["per_frame"]["motion_psnr"], np.nanmean(expected[order], axis=0), rtol=1e-7)
    assert report["mean"]["baseline_motion_psnr"] < report["mean"]["baseline_psnr"]  # copy-last is wrong there


# Per-sequence agreement between world sizes and batch sizes, in dB. Not bitwise: a float32 convolution sums in
# an order that depends on the batch size, so the per-sequence MSE differs in its last bits (measured up to
# 1.2e-7 dB, about one float32 ulp of the MSE); 1e-5 dB leaves room for other CPUs' kernels and is still far
# below the 0.01 dB the table prints.
EVAL_ATOL = 1e-5


def z_dependent_checkpoint(tiny_run: Path, out: Path) -> Path:
    """The tiny run's best checkpoint with the paths from z to the frames amplified: a briefly trained model
    hardly uses z, so without this a test of the latents' seeding would pass whatever the seeding did."""
    shutil.copytree(tiny_run / "checkpoints" / "best", out)
    weights = load_file(out / "model.safetensors")
    g = ModelConfig(**TINY_MODEL).g_dim
    weights["predictor.embed.weight"][:, g:g + TINY_MODEL["z_dim"]] *= 30
    weights["predictor.output.0.weight"] *= 30  # (scaling the decoder too would saturate its output and hide z)
    save_file(weights, out / "model.safetensors")
    return out


@pytest.mark.slow
def test_eval_is_the_same_on_one_or_two_ranks_at_any_batch_size(tiny_run, pushing_shards, tmp_path):
    ckpt = z_dependent_checkpoint(tiny_run, tmp_path / "ckpt")
    cmd = accelerate_launch("-m", "toolkit", "eval", str(ckpt), "--shards", pushing_shards, "--split", "test",
                            "--batch-size", "2", "--samples", "3", "--seed", "5", "--json", str(tmp_path / "two.json"))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    keys, _, _ = split_in_manifest_order(pushing_shards, "test")
    assert two["world_size"] == 2 and two["count"] == 5 and two["keys"] == sorted(keys)
    assert "best3 PSNR" in proc.stdout and proc.stdout.count("frames 3..12 scored") == 1  # the table, printed once
    runs = {batch: eval_checkpoint(ckpt, pushing_shards, "test", samples=3, seed=5, batch_size=batch,
                                   out=tmp_path / f"one-{batch}.json", quiet=True) for batch in (1, 5)}
    other_seed = eval_checkpoint(ckpt, pushing_shards, "test", samples=3, seed=6, out=tmp_path / "s6.json", quiet=True)
    for report in runs.values():
        for metric in ("psnr", "ssim", "baseline_psnr"):
            np.testing.assert_allclose(report["per_sequence"][metric], two["per_sequence"][metric], rtol=0,
                                       atol=EVAL_ATOL)
        assert abs(report["mean"]["psnr"] - two["mean"]["psnr"]) < EVAL_ATOL  # the table prints 0.01 dB
    # ... while the latents really matter: another seed moves every sequence by well over that tolerance
    moved = np.abs(np.subtract(other_seed["per_sequence"]["psnr"], two["per_sequence"]["psnr"]))
    assert moved.min() > 10 * EVAL_ATOL and moved.mean() > 100 * EVAL_ATOL, moved
    assert two["mean"]["psnr"] - two["mean"]["psnr_mean"] > 1e-4


def test_eval_table_and_default_report_path(tiny_run, pushing_shards):
    proc = run_toolkit("eval", str(tiny_run / "checkpoints" / "best"), "--shards", pushing_shards, "--split",
                       "validate", "--samples", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tiny_run / "eval" / "best-validate-lab-n2.json"  # the protocol in the name: reports never collide
    assert path.is_file() and f"wrote {path}" in proc.stdout
    lines = proc.stdout.splitlines()
    assert "protocol lab (4 videos, 2 context frame(s), frames 3..12 scored, 2 sample(s)" in lines[0]
    assert "best2 PSNR" in lines[1] and "copy SSIM" in lines[1] and "best motion" in lines[1]
    assert [line.split()[0] for line in lines[2:13]] == [str(f) for f in range(3, 13)] + ["mean"]
    report = json.loads(path.read_text())
    psnr = f"  {'PSNR':>16s} {'best of 2':>16s}: {report['mean']['psnr']:.4f} ± {report['ci']['psnr']:.4f} dB"
    assert lines[13].startswith("means over videos ± 95% interval") and psnr in lines[14:]
    path.unlink()


def test_checkpoint_from_a_different_model_is_a_clear_error(tiny_run, pushing_shards, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_run / "checkpoints" / "best", ckpt)
    other = SVG(ModelConfig(width=0.125, g_dim=16, z_dim=8, rnn_size=32), cond_dim=7, n_past=2)
    save_file(other.state_dict(), ckpt / "model.safetensors")
    proc = run_toolkit("eval", str(ckpt), "--shards", pushing_shards, "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.safetensors does not fit the model its train_state.json describes" in proc.stderr
    assert "posterior.mu_net.weight is (8, 32), the model has (4, 32)" in proc.stderr
    proc = run_toolkit("eval", str(tmp_path), "--shards", pushing_shards)
    assert proc.returncode == 2 and "not a checkpoint (no train_state.json)" in proc.stderr


def test_conditional_checkpoint_on_unconditional_shards_is_refused(tiny_run, tmp_path):
    from toolkit.data.shards.convert import convert
    from toolkit.data.worlds.synth import generate_dataset

    generate_dataset(tmp_path / "digits", "shapes", {"train": 1, "validate": 0, "test": 2}, progress=False)
    convert(tmp_path / "digits", tmp_path / "shards", progress=False)
    proc = run_toolkit("eval", str(tiny_run / "checkpoints" / "best"), "--shards", str(tmp_path / "shards"))
    assert proc.returncode == 2 and "conditions on 7 values per frame" in proc.stderr and "cond dim 0" in proc.stderr


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/cvae-exploit-marker"),))


def test_resume_never_unpickles_code(tiny_run, pushing_shards, tmp_path):
    marker = Path("/tmp/cvae-exploit-marker")
    marker.unlink(missing_ok=True)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    newest = sorted((run / "checkpoints").glob("epoch_*"))[-1]
    with open(newest / "optimizer.bin", "wb") as f:
        pickle.dump({"state": _Exploit()}, f)
    # an attacker who can write the checkpoint can also record the new file's checksum
    state_file = newest / "train_state.json"
    payload = json.loads(state_file.read_text())
    payload["files"]["optimizer.bin"] = {"bytes": (newest / "optimizer.bin").stat().st_size,
                                         "sha256": file_sha256(newest / "optimizer.bin")}
    state_file.write_text(json.dumps(payload))
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, run, train={"epochs": 3, "epoch_size": 3,
                                                                          "eval_every": 1, "resume": "auto"})
    proc = run_toolkit("train", str(recipe))
    assert proc.returncode == 2 and "refusing to load a file that is not weights-only" in proc.stderr, proc.stderr
    assert not marker.exists()
