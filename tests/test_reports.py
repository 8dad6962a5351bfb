"""`cvae predict` videos and strips, `cvae plot` figures, `cvae sweep local` tables and the sweep YAMLs."""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, run_toolkit, tiny_recipe
from toolkit.config import load_config
from toolkit.data.shards.manifest import read_manifest
from toolkit.eval.plots import short_labels
from toolkit.eval.predict import predict
from toolkit.sweep.runner import launch_processes, run_env
from toolkit.sweep.stats import mean_ci95, t95
from toolkit.sweep.table import results_table
from toolkit.sweep.spec import SEED, agent_args, configurations, load_sweep, recipe_and_args
from toolkit.train.runlog import read_metrics

SWEEPS = sorted((REPO / "recipes" / "sweeps").glob("*.yaml"))


def test_predict_writes_a_gif_with_the_right_frame_count_and_a_strip(tiny_run, pushing_shards, tmp_path):
    shard = read_manifest(pushing_shards).urls("test")[0]
    proc = run_toolkit("predict", str(tiny_run / "checkpoints" / "best"), "--input", shard, "--out",
                       str(tmp_path / "p.gif"), "--samples", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Image.open(tmp_path / "p.gif") as gif:
        assert gif.n_frames == 12  # 2 context + 10 predicted
        assert gif.size == (4 * 68, 68)  # ground truth | prediction | 2 samples, 64 px + 2 px borders
    with Image.open(tmp_path / "p.png") as strip:
        assert strip.size == (12 * 68, 4 * 68)  # time left to right, one row per panel
    ckpt = str(tiny_run / "checkpoints" / "best")
    proc = run_toolkit("predict", ckpt, "--input", shard, "--out", str(tmp_path / "k.gif"), "--key", "traj_0_to_255__1")
    assert proc.returncode == 0 and proc.stdout.startswith("traj_0_to_255__1:"), proc.stderr[-3000:]
    proc = run_toolkit("predict", ckpt, "--input", shard, "--out", str(tmp_path / "k.gif"), "--key", "nope")
    assert proc.returncode == 2 and f"{shard}: no sequence 'nope'" in proc.stderr
    proc = run_toolkit("predict", ckpt, "--input", shard, "--out", str(tmp_path / "k.avi"))
    assert proc.returncode == 2 and "use a .gif or .mp4 file name" in proc.stderr


def test_predict_from_a_sequence_folder_with_more_frames_and_mp4(tiny_run, pushing_shards, tmp_path):
    folder = Path(pushing_shards).parent / "folders" / "test" / "traj_0_to_255" / "0"
    proc = run_toolkit("predict", str(tiny_run / "checkpoints" / "best"), "--input", str(folder), "--out",
                       str(tmp_path / "p.gif"), "--samples", "0", "--n-future", "28")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Image.open(tmp_path / "p.gif") as gif:
        assert gif.n_frames == 30
    imageio = pytest.importorskip("imageio.v3")
    proc = run_toolkit("predict", str(tiny_run / "checkpoints" / "best"), "--input", str(folder), "--out",
                       str(tmp_path / "p.mp4"), "--samples", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert imageio.imread(tmp_path / "p.mp4", plugin="FFMPEG", index=None).shape[0] == 12
    proc = run_toolkit("predict", str(tiny_run / "checkpoints" / "best"), "--input", str(folder), "--out",
                       str(tmp_path / "p.gif"), "--n-future", "29")
    assert proc.returncode == 2 and "30 frames, the model needs 2 + 29" in proc.stderr


def test_plot_writes_training_curves_and_per_frame_psnr(tiny_run, pushing_shards, tmp_path):
    run_toolkit("eval", str(tiny_run / "checkpoints" / "best"), "--shards", pushing_shards, "--json",
                str(tmp_path / "report.json"))
    proc = run_toolkit("plot", str(tiny_run), str(tmp_path / "report.json"), "--out", str(tmp_path / "plots"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("training_curves.png", "psnr_per_frame.png", "latent.png"):
        path = tmp_path / "plots" / name
        with Image.open(path) as img:
            assert path.stat().st_size > 10_000 and img.size[0] > 500 and img.size[1] > 300
    with Image.open(tmp_path / "plots" / "psnr_per_frame.png") as img:
        assert img.size[0] > 1000  # a PSNR and an SSIM panel, each with its band over videos
    proc = run_toolkit("plot", str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and "not a run directory" in proc.stderr


def test_plot_labels_keep_what_differs_between_runs():
    assert short_labels(["a=1,b=2,c=3", "a=1,b=3,c=3"]) == ["b=2", "b=3"]
    assert short_labels(["a=1,b=2", "a=1,b=2,c=3"]) == ["a=1,b=2", "c=3"]  # nothing left: the name
    assert short_labels(["a=1,b=2", "b=2,a=1"]) == ["a=1,b=2", "b=2,a=1"]  # would be alike: names kept
    assert short_labels(["demo"]) == ["demo"] and short_labels(["x", "y"]) == ["x", "y"]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_parameters_are_config_keys_and_agent_commands_parse(path):
    sweep = load_sweep(path)  # rejects unknown keys with a suggestion
    recipe, fixed = recipe_and_args(sweep, path)
    assert (REPO / recipe).is_file()
    assert sweep["command"][-1] == "${args}" and any("{run_id}" in c for c in sweep["command"])
    assert sweep["metric"]["name"] == "val/psnr"  # what the trainer logs
    for config in configurations(sweep, max_runs=8, seed=1):
        cfg = load_config(REPO / recipe, fixed + agent_args(config))
        for key, value in config.items():
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == value


def test_sweep_with_an_unknown_parameter_is_rejected(tmp_path):
    sweep = yaml.safe_load(SWEEPS[0].read_text())
    sweep["parameters"]["schedule.kl_aneal"] = {"values": ["cyclical"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    proc = run_toolkit("sweep", "local", str(tmp_path / "s.yaml"))
    assert proc.returncode == 2 and "did you mean 'schedule.kl_anneal'?" in proc.stderr


@pytest.mark.parametrize("flags, message", [(["--max-runs", "0"], "--max-runs must be >= 1, got 0"),
                                            (["--part", "3/2"], "--part must be K/N")])
def test_local_sweep_rejects_bad_counts_before_starting_a_run(flags, message, tmp_path):
    proc = run_toolkit("sweep", "local", str(SWEEPS[0]), "--out", str(tmp_path / "out"), *flags)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # no run started


@pytest.mark.slow
def test_local_sweep_runs_the_grid_and_writes_the_table(pushing_shards, tmp_path):
    recipe = tiny_recipe(tmp_path / "recipe.yaml", pushing_shards, tmp_path / "unused",
                         train={"epochs": 2, "epoch_size": 2, "eval_every": 1})
    sweep = {"method": "grid", "metric": {"name": "val/psnr", "goal": "maximize"},
             "parameters": {"schedule.kl_anneal": {"values": ["cyclical", "monotonic"]},
                            "schedule.tfr": {"value": 0.5}},
             "command": ["accelerate", "launch", "-m", "toolkit", "train", str(recipe), "--data.batch_size=3",
                         "${args}"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    proc = run_toolkit("sweep", "local", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--",
                       "--train.epoch_size=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list(csv.DictReader(open(tmp_path / "out" / "runs.csv")))
    assert [r["schedule.kl_anneal"] for r in runs] == ["cyclical", "monotonic"]
    for row in runs:
        run = Path(tmp_path / "out" / row["run"])
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["schedule"]["kl_anneal"] == row["schedule.kl_anneal"] and cfg["schedule"]["tfr"] == 0.5
        assert cfg["data"]["batch_size"] == 3 and cfg["train"]["epoch_size"] == 3  # fixed args and extras
        assert float(row["best_psnr"]) == max(r["psnr"] for r in read_metrics(run, "val")) and row["status"] == "done"
    configs = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert [(c["schedule.kl_anneal"], c["n"]) for c in configs] == [("cyclical", "1"), ("monotonic", "1")]
    assert float(configs[0]["best_psnr_mean"]) == float(runs[0]["best_psnr"])
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.count("\n") == 4 and "best val PSNR" in table and "±" not in table  # one seed: no interval
    assert "active units" in table and float(runs[0]["final_active_units"]) >= 0 and float(runs[0]["final_kl"]) >= 0
    assert (tmp_path / "out" / "training_curves.png").stat().st_size > 10_000
    again = run_toolkit("sweep", "local", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"))
    assert again.returncode == 0 and "[1]" not in again.stdout  # finished runs are not run again
    # an interrupted run (no final record, newest checkpoint lost) continues from its newest checkpoint
    run = tmp_path / "out" / runs[1]["run"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines if '"kind": "final"' not in line))
    newest = sorted((run / "checkpoints").glob("epoch_*"))
    shutil.rmtree(newest[-1])
    resumed = run_toolkit("sweep", "local", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[1]" not in resumed.stdout and "[2]" in resumed.stdout and f"resuming from {newest[-2]}" in resumed.stdout
    assert list(csv.DictReader(open(tmp_path / "out" / "runs.csv")))[1]["status"] == "done"
    # a recipe lengthened since (more epochs) continues its finished runs; until then the table calls them incomplete
    sweep_args = ["sweep", "local", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out")]
    first = run_toolkit(*sweep_args, "--part", "1/2", "--", "--train.epochs=3")
    assert first.returncode == 0 and "[1]" in first.stdout and "[2]" not in first.stdout, first.stderr[-3000:]
    assert [r["status"] for r in csv.DictReader(open(tmp_path / "out" / "runs.csv"))] == ["done", "incomplete"]
    longer = run_toolkit(*sweep_args, "--", "--train.epochs=3")
    assert longer.returncode == 0 and "[1]" not in longer.stdout and "[2]" in longer.stdout, longer.stderr[-3000:]
    for row in csv.DictReader(open(tmp_path / "out" / "runs.csv")):
        final = read_metrics(tmp_path / "out" / row["run"], "final")
        assert row["status"] == "done" and final[-1]["epoch"] == 3
    assert "checkpoints/epoch_000002" in first.stdout and "checkpoints/epoch_000002" in longer.stdout
    # a run that fails is reported in the table and makes the sweep exit non-zero
    shutil.rmtree(run)
    failed = run_toolkit("sweep", "local", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"),
                         "--", "--train.epochs=-1")
    assert failed.returncode == 1 and "1 of 2 run(s) did not finish" in failed.stderr
    assert list(csv.DictReader(open(tmp_path / "out" / "results.csv")))[1]["status"] == "failed"


@pytest.mark.slow
def test_local_sweep_with_seeds_and_parts_gives_intervals(pushing_shards, tmp_path):
    recipe = tiny_recipe(tmp_path / "recipe.yaml", pushing_shards, tmp_path / "unused",
                         train={"epochs": 1, "epoch_size": 2, "eval_every": 1})
    sweep = {"method": "grid", "parameters": {"schedule.kl_anneal": {"values": ["cyclical"]}},
             "command": ["accelerate", "launch", "-m", "toolkit", "train", str(recipe), "${args}"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    first = run_toolkit("sweep", "local", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--seeds", "3",
                        "--part", "1/2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[1]" in first.stdout and "[2]" not in first.stdout and "[3]" in first.stdout  # runs 1 and 3
    assert "pending" in (tmp_path / "out" / "results.md").read_text()
    second = run_toolkit("sweep", "local", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--seeds", "3",
                         "--part", "2/2")
    assert second.returncode == 0 and "[2]" in second.stdout and "[1]" not in second.stdout
    runs = list(csv.DictReader(open(tmp_path / "out" / "runs.csv")))
    assert [r["train.seed"] for r in runs] == ["1", "2", "3"]
    seeded = [yaml.safe_load((tmp_path / "out" / r["run"] / "config.yaml").read_text())["train"]["seed"]
              for r in runs]
    assert seeded == [1, 2, 3]
    best = [float(r["best_psnr"]) for r in runs]
    assert len(set(best)) == 3  # the seeds really differ
    row = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))[0]
    mean, std = statistics.mean(best), statistics.stdev(best)
    assert row["n"] == "3" and float(row["best_psnr_mean"]) == pytest.approx(mean, rel=1e-12)
    assert float(row["best_psnr_ci95"]) == pytest.approx(4.303 * std / 3 ** 0.5, rel=1e-12)
    assert f"{mean:.2f} ± {4.303 * std / 3 ** 0.5:.2f}" in (tmp_path / "out" / "results.md").read_text()


def test_t_quantiles_and_intervals():
    assert t95(1) == 12.706 and t95(2) == 4.303 and t95(30) == 2.042
    assert t95(60) == pytest.approx(2.0003, abs=1e-3) and t95(10_000) == pytest.approx(1.9602, abs=1e-3)
    mean, half, n = mean_ci95([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.303 * 1.0 / 3 ** 0.5)
    assert math.isnan(mean_ci95([5.0])[1])


def test_runners_side_by_side_share_the_cores_unless_told(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert run_env(1)["OMP_NUM_THREADS"] == "16" and run_env(2)["OMP_NUM_THREADS"] == "8"
    assert run_env(2, processes=4)["OMP_NUM_THREADS"] == "2" and run_env(32)["OMP_NUM_THREADS"] == "1"
    assert launch_processes(["--config_file", str(REPO / "recipes/accelerate/cpu.yaml")]) == 2
    assert launch_processes(["--config_file", str(REPO / "recipes/accelerate/cpu1.yaml")]) == 1
    assert launch_processes(["--config_file", str(REPO / "recipes/accelerate/cpu.yaml"), "--num_processes", "3"]) == 3
    assert launch_processes(["--config_file", "x.yaml", "--num_machines", "2", "--num_processes", "16"]) == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert run_env(2)["OMP_NUM_THREADS"] == "3"  # the user's choice wins


def test_predict_sorted_shows_the_samples_best_first(tiny_run, pushing_shards, tmp_path):
    shard = read_manifest(pushing_shards).urls("test")[0]
    out = predict(str(tiny_run / "checkpoints" / "best"), shard, tmp_path / "p.gif", samples=4, sort=True)
    shown = [s["psnr"] for s in out["samples"]]
    assert sorted(s["sample"] for s in out["samples"]) == [0, 1, 2, 3] and shown == sorted(shown, reverse=True)
    # the strip's rows are in that order: each row's PSNR against the ground-truth row, from the PNG itself
    strip = np.asarray(Image.open(tmp_path / "p.png"), dtype=np.float64) / 255
    rows = [strip[r * 68 + 2:r * 68 + 66].reshape(64, 12, 68, 3)[:, 2:, 2:66] for r in range(6)]
    from_png = [float(np.mean(-10 * np.log10(((row - rows[0]) ** 2).mean(axis=(0, 2))))) for row in rows[2:]]
    assert from_png == pytest.approx(shown, abs=0.05)  # 8-bit rounding only
    unsorted = predict(str(tiny_run / "checkpoints" / "best"), shard, tmp_path / "q.gif", samples=4)
    assert [s["sample"] for s in unsorted["samples"]] == [0, 1, 2, 3]


def test_the_table_shows_mean_of_n_and_diversity_only_for_sampled_validations():
    def row(seed, **extra):
        base = {"best_psnr": 24.0 + seed, "final_psnr": 24.0, "final_ssim": 0.8, "baseline_psnr": 21.0,
                "final_motion_psnr": 17.0, "final_kl": 0.1, "final_active_units": 0}
        return {"name": f"s{seed}", "config": {"model.prior": "fixed", SEED: seed}, "status": "done", **base, **extra}

    md, _ = results_table([row(1), row(2)], ["model.prior", SEED])
    assert "mean-of-N" not in md and "diversity" not in md
    md, table = results_table([row(1, final_psnr_mean=23.0, final_pixel_std=0.01),
                               row(2, final_psnr_mean=23.5, final_pixel_std=0.03)], ["model.prior", SEED])
    assert "mean-of-N" in md and "0.0200 ± " in md
    assert float(next(csv.DictReader(io.StringIO(table)))["final_psnr_mean_mean"]) == 23.25
