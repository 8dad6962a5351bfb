"""Evaluation protocols: each record pins its published definition; running best-of-N equals the argmax over all
samples; intervals; refusals; a model with one context frame trains and is scored under act15; --compare."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import REPO, run_toolkit, tiny_recipe
from toolkit.config import load_config
from toolkit.errors import ConfigError, ToolkitError
from toolkit.eval import metrics
from toolkit.eval.compare import compare
from toolkit.eval.protocols import MODEL, PROTOCOLS, bind, lab
from toolkit.eval.scoring import BatchScores
from toolkit.eval.summary import Z95, half_width, summarize
from toolkit.train.runlog import read_metrics


def test_each_protocol_record_pins_its_published_definition():
    svg, act15, fvd, lab_ = (PROTOCOLS[n] for n in ("svg", "act15", "fvd", "lab"))
    # SVG / SAVP / SRVP: 2 -> 28, 100 samples, best per metric; PSNR per channel (range 1); LPIPS AlexNet
    assert (svg.n_past, svg.n_future, svg.samples, svg.select, svg.psnr, svg.data_range, svg.lpips_net) == \
        (2, 28, 100, "per_metric", "per_channel", 1.0, "alex")
    assert svg.metrics == ("psnr", "ssim", "lpips") and svg.fvd is None and "edenton/svg" in svg.source
    # iVideoGPT's action-conditioned BAIR: 1 -> 15, 100 samples, piqa's PSNR, LPIPS VGG, FVD over every sample's
    # clip with the context frame
    assert (act15.n_past, act15.n_future, act15.samples, act15.psnr, act15.lpips_net, act15.requires_cond) == \
        (1, 15, 100, "joint", "vgg", True)
    assert (act15.fvd.clip, act15.fvd.samples, act15.fvd.resize) == ("context+future", "all", 224)
    # SRVP's FVD: all 30 frames with the 2 context frames, one sample per video
    assert (fvd.n_past, fvd.n_future, fvd.samples, fvd.fvd.samples, fvd.fvd.clip) == (2, 28, 1, "first",
                                                                                      "context+future")
    assert (lab_.n_past, lab_.n_future, lab_.samples) == (MODEL, MODEL, 1)
    assert json.loads(json.dumps(svg.record()))["metrics"] == ["psnr", "ssim", "lpips"]


@pytest.mark.parametrize("name, args, message", [
    ("svg", (1, 10, 7, 30), "gives the model 2 context frame(s), but this model was trained with data.n_past=1"),
    ("act15", (1, 15, 0, 30), "action-conditioned, but this model is unconditional"),
    ("svg", (2, 10, 7, 12), "needs 2 + 28 frames per video, but the sequences have 12"),
    ("fvd", (2, 10, 7, 30, None, 5), "predicts 28 frames by definition"),
])
def test_a_protocol_that_does_not_fit_the_model_is_refused_in_one_line(name, args, message):
    with pytest.raises(ToolkitError) as error:
        bind(PROTOCOLS[name], *args)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_fewer_samples_than_published_is_marked_as_a_deviation():
    assert "deviation" not in bind(PROTOCOLS["svg"], 2, 10, 7, 30).extra
    bound = bind(PROTOCOLS["svg"], 2, 10, 7, 30, samples=10)
    assert bound.samples == 10 and bound.extra["deviation"] == "10 samples per video instead of the protocol's 100"
    assert bind(PROTOCOLS["lab"], 2, 10, 7, 30, samples=10).extra == {}  # lab's N is the user's to choose


def _frames(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_running_best_of_n_equals_the_argmax_over_all_samples():
    B, T, S = 3, 4, 7
    past, future = _frames(0, B, 2, 3, 16, 16), _frames(1, B, T, 3, 16, 16)
    # samples at increasing distance from the truth, in a different order per video, plus two exact ties
    noise = _frames(2, S, B, T, 3, 16, 16) - 0.5
    scale = torch.stack([torch.randperm(S, generator=torch.Generator().manual_seed(b)) for b in range(B)], 1)
    preds = (future + noise * (0.05 + 0.05 * scale[:, :, None, None, None, None])).clamp(0, 1)
    preds[4, 0] = preds[2, 0]  # a tie: the lower index must win, as an argmax would
    distance = lambda p, t: (p - t).abs().mean(dim=(2, 3, 4)).double()  # noqa: E731  lower is better, as LPIPS
    protocol = lab(2, T, S)
    protocol = protocol.__class__(**{**protocol.__dict__, "metrics": ("psnr", "ssim", "lpips")})
    running = BatchScores(protocol, past, future, distance)
    for chunk in (range(0, 2), range(2, 4), range(4, 6), range(6, 7)):
        running.add(preds[chunk.start:chunk.stop])
    rows = running.rows(["a", "b", "c"])
    psnr = torch.stack([metrics.psnr(p, future) for p in preds])  # [S, B, T]
    ssim = torch.stack([metrics.ssim(p, future) for p in preds])
    lp = torch.stack([distance(p, future) for p in preds])
    for b in range(B):
        for name, values, pick in (("psnr", psnr, torch.argmax), ("ssim", ssim, torch.argmax),
                                   ("lpips", lp, torch.argmin)):
            assert rows[b][name] == values[pick(values[:, b].mean(1)), b].tolist()
            assert rows[b][f"{name}_mean"] == pytest.approx(values[:, b].mean(0).tolist(), rel=1e-12)
        std = preds[:, b].double().std(dim=0).mean(dim=(1, 2, 3))  # per-pixel std over samples, ddof 1
        assert rows[b]["pixel_std"] == pytest.approx(std.tolist(), rel=1e-5)  # float32 sums of shifted data
        pairs = torch.stack([distance(preds[k], preds[k + 1])[b] for k in (0, 2, 4)]).mean(0)
        assert rows[b]["lpips_diversity"] == pytest.approx(pairs.tolist(), rel=1e-12)
    assert len({tuple(r["psnr"]) for r in rows}) == 3 and running.count == S


def test_joint_psnr_is_one_mse_over_all_channels():
    pred, target = _frames(3, 2, 3, 3, 8, 8), _frames(4, 2, 3, 3, 8, 8)
    mse = (pred.double() - target.double()).square().mean(dim=(2, 3, 4))
    torch.testing.assert_close(metrics.psnr(pred, target, per_channel=False), -10 * torch.log10(mse))
    assert not torch.allclose(metrics.psnr(pred, target, per_channel=False), metrics.psnr(pred, target))


def test_intervals_are_1_96_standard_errors_over_videos():
    values = torch.tensor([[20.0, 22.0], [21.0, 25.0], [19.5, 23.0], [24.0, float("nan")]], dtype=torch.float64)
    result = summarize([{"key": f"k{i}", "psnr": row.tolist()} for i, row in enumerate(values)], 1)
    videos = np.array([21.0, 23.0, 21.25, 24.0])  # each video's mean over its finite frames
    assert result.ci["psnr"] == pytest.approx(Z95 * videos.std(ddof=1) / math.sqrt(4), rel=1e-12)
    assert result.per_frame_ci["psnr"][1] == pytest.approx(Z95 * np.std([22, 25, 23], ddof=1) / math.sqrt(3))
    assert math.isnan(half_width(torch.tensor([1.0], dtype=torch.float64)))


def _report(path, values: list[float], protocol: str = "svg", keys=("a", "b", "c", "d")) -> str:
    report = {"protocol": {"name": protocol}, "split": "test", "n_past": 2, "n_future": 28, "samples": 100,
              "keys": list(keys), "per_sequence": {"psnr": values, "lpips": [1 - v / 100 for v in values]}}
    path.write_text(json.dumps(report))
    return str(path)


def test_compare_gives_paired_differences_over_videos_and_seeds(tmp_path):
    a = [_report(tmp_path / f"a{s}.json", [20 + s, 21 + s, 22, 23 + s]) for s in range(3)]
    b = [_report(tmp_path / f"b{s}.json", [20, 20.5, 22.5, 22 + s]) for s in range(3)]
    result = compare(a, b)
    row = next(r for r in result["rows"] if r["value"] == "psnr")
    d = np.array([[20 + s, 21 + s, 22, 23 + s] for s in range(3)]).mean(0) - np.array(
        [[20, 20.5, 22.5, 22 + s] for s in range(3)]).mean(0)
    assert row["difference"] == pytest.approx(d.mean()) and row["a_better"] == 3 and row["videos"] == 4
    assert row["ci_videos"] == pytest.approx(1.96 * d.std(ddof=1) / 2)
    per_seed = [np.mean([20 + s, 21 + s, 22, 23 + s]) - np.mean([20, 20.5, 22.5, 22 + s]) for s in range(3)]
    assert row["ci_seeds"] == pytest.approx(4.303 * np.std(per_seed, ddof=1) / math.sqrt(3))
    lp = next(r for r in result["rows"] if r["value"] == "lpips")
    assert lp["a_better"] == 3  # lower LPIPS is better


def test_compare_refuses_reports_that_are_not_comparable(tmp_path, capsys):
    a = _report(tmp_path / "a.json", [1, 2, 3, 4])
    with pytest.raises(ToolkitError, match="under protocol lab"):
        compare([a], [_report(tmp_path / "b.json", [1, 2, 3, 4], protocol="lab")])
    with pytest.raises(ToolkitError, match="scored other videos"):
        compare([a], [_report(tmp_path / "c.json", [1, 2, 3, 4], keys="wxyz")])
    proc = run_toolkit("eval", "--compare", a, str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'missing.json'}: report not found"


def test_one_context_frame_needs_skips_from_the_last_context_frame(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", data={"n_past": 1},
                         model={"skip_from": "reference"})
    with pytest.raises(ConfigError, match="does not exist with data.n_past = 1"):
        load_config(recipe)
    assert load_config(REPO / "recipes/train/bair_act15.yaml").data.n_past == 1


@pytest.mark.slow
def test_a_model_with_one_context_frame_trains_and_is_scored_under_act15(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", data={"n_past": 1, "n_future": 15},
                         train={"epochs": 1, "epoch_size": 3, "eval_every": 1})
    proc = run_toolkit("train", str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "best"
    proc = run_toolkit("eval", str(ckpt), "--shards", pushing_shards, "--protocol", "act15", "--samples", "4",
                       "--skip", "lpips,fvd", "--json", str(tmp_path / "act15.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "act15.json").read_text())
    assert (report["n_past"], report["n_future"], report["samples"], report["count"]) == (1, 15, 4, 5)
    assert len(report["per_frame"]["psnr"]) == 15 and report["protocol"]["psnr"] == "joint"
    assert report["not_computed"] == {"lpips": "left out by --skip lpips", "fvd": "left out by --skip fvd"}
    assert "NOT the published protocol: 4 samples" in proc.stdout and "LPIPS not computed" in proc.stdout
    assert report["mean"]["psnr"] > report["mean"]["psnr_mean"] and report["mean"]["pixel_std"] > 0
    refused = run_toolkit("eval", str(ckpt), "--shards", pushing_shards, "--protocol", "svg")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "protocol svg gives the model 2 context frame(s), but this model was trained with data.n_past=1" in \
        refused.stderr and not (tmp_path / "run" / "eval").exists()


def test_validation_with_several_samples_logs_the_gap_and_the_latent(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run",
                         train={"epochs": 1, "epoch_size": 2, "eval_every": 1, "val_samples": 3})
    proc = run_toolkit("train", str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    val = read_metrics(tmp_path / "run", "val")[-1]
    assert val["samples"] == 3 and val["protocol"] == "lab" and val["psnr"] >= val["psnr_mean"]
    assert val["pixel_std"] > 0 and 0 <= val["active_units"] <= 4 and len(val["kl_per_dim"]) == 4
    with pytest.raises(ConfigError, match="val_samples"):
        load_config(recipe, ["--train.val_samples=-1"])
