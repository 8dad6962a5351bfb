"""LPIPS and FVD inside `cvae eval`: the real loading path with random networks written as weight files, FVD
equal to an independent computation of its two clip sets, and a missing weight file stopping before any work."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_toolkit
from test_eval import split_in_manifest_order
from toolkit.eval import fvd, perceptual
from toolkit.eval.evaluate import batch_noise
from toolkit.eval.report import eval_checkpoint
from toolkit.train.checkpoint import load_model

pytest.importorskip("lpips")
pytest.importorskip("cdfvd")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> dict:
    """A random AlexNet and a random I3D written as weight files under other names than the real ones (loaded
    unverified). The I3D's BatchNorm statistics come from a pass over noise videos: left at their init, its
    logits hardly depend on the input, and FVD would be ~0 whatever the clips."""
    import torchvision
    from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), root / "alex.pth")
    i3d = InceptionI3d(400, in_channels=3)
    for m in i3d.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.momentum = None
    with torch.no_grad():
        i3d.train()(torch.rand(2, 3, 9, 224, 224) * 2 - 1)
    torch.save(i3d.state_dict(), root / "i3d.pt")
    return {"lpips": str(root / "alex.pth"), "i3d": str(root / "i3d.pt")}


@pytest.mark.slow
def test_fvd_protocol_equals_the_distance_of_its_two_clip_sets(tiny_run, pushing_shards, tmp_path, random_weights):
    ckpt = tiny_run / "checkpoints" / "best"
    report = eval_checkpoint(ckpt, pushing_shards, "test", protocol="fvd", limit=2, seed=4, quiet=True,
                             i3d_weights=random_weights["i3d"], out=tmp_path / "fvd.json")
    assert report["fvd"]["real"] == 2 and report["fvd"]["generated"] == 2 and report["n_future"] == 28
    assert report["protocol"]["fvd"]["resize_mode"] == "tf1" and report["protocol"]["fvd"]["ddof"] == 1
    assert report["weights"][0]["path"] == random_weights["i3d"] and len(report["weights"][0]["sha256"]) == 64
    keys, frames, cond = split_in_manifest_order(pushing_shards, "test")
    keys, frames, cond = keys[:2], frames[:2], cond[:2]  # --limit: the first videos in manifest order
    model, _, _ = load_model(ckpt)
    model = model.to(memory_format=torch.channels_last)
    pred = model.generate(frames[:, :2], cond, 28, batch_noise(model, keys, 4, 0, 28))
    net = fvd.load_i3d(random_weights["i3d"], "cpu")
    real = fvd.FeatureStats().add(fvd.i3d_features(net, frames, resize="tf1"))  # all 30 frames, context included
    fake = fvd.FeatureStats().add(fvd.i3d_features(net, torch.cat([frames[:, :2], pred], 1), resize="tf1"))
    expected = fvd.frechet_distance(real, fake, ddof=1)
    assert expected > 1e-3 and report["fvd"]["fvd"] == pytest.approx(expected, rel=1e-4)
    context_left_out = fvd.FeatureStats().add(fvd.i3d_features(net, torch.cat([frames[:, 2:4], pred], 1),
                                                               resize="tf1"))
    assert abs(fvd.frechet_distance(real, context_left_out) - expected) > 1e-4 * expected  # the clip matters


@pytest.mark.slow
def test_svg_protocol_scores_lpips_best_of_n_and_diversity(tiny_run, pushing_shards, tmp_path, random_weights):
    ckpt = tiny_run / "checkpoints" / "best"
    report = eval_checkpoint(ckpt, pushing_shards, "test", protocol="svg", samples=4, limit=2, seed=4, quiet=True,
                             lpips_weights=random_weights["lpips"], out=tmp_path / "svg.json")
    mean, per_frame = report["mean"], report["per_frame"]
    assert len(per_frame["lpips"]) == 28 and report["protocol"]["extra"]["deviation"].startswith("4 samples")
    assert 0 < mean["lpips"] <= mean["lpips_mean"] and mean["psnr"] >= mean["psnr_mean"]  # lower LPIPS is better
    assert mean["lpips_diversity"] > 0 and mean["pixel_std"] > 0 and report["not_computed"] == {}
    assert [w["path"] for w in report["weights"]][0] == random_weights["lpips"]
    net = perceptual.load_lpips("cpu", random_weights["lpips"])
    _, frames, _ = split_in_manifest_order(pushing_shards, "test")
    baseline = frames[:2, 1:2].expand(2, 28, 3, 64, 64)
    expected = perceptual.lpips_per_frame(net, baseline, frames[:2, 2:30]).mean(0)
    assert per_frame["baseline_lpips"] == pytest.approx(expected.tolist(), rel=1e-6)


def test_a_missing_weight_file_stops_before_any_work(tiny_run, pushing_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("CVAE_WEIGHTS_DIR", str(tmp_path / "empty"))
    out = tmp_path / "r.json"
    proc = run_toolkit("eval", str(tiny_run / "checkpoints" / "best"), "--shards", pushing_shards, "--protocol", "svg",
                       "--json", str(out))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(tmp_path / "empty" / "alexnet-owt-7be5be79.pth") in lines[0] and "cvae weights fetch alexnet" in lines[0]
    assert not out.exists()
    skipped = run_toolkit("eval", str(tiny_run / "checkpoints" / "best"), "--shards", pushing_shards, "--protocol",
                          "svg", "--samples", "2", "--limit", "1", "--skip", "lpips", "--json", str(out))
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert json.loads(out.read_text())["not_computed"] == {"lpips": "left out by --skip lpips"}
    assert "LPIPS not computed: left out by --skip lpips" in skipped.stdout
