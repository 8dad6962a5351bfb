"""The trainer, for real: 2-process DDP on CPU, exact resume after kill -9, SIGTERM checkpoints, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, TINY_MODEL, accelerate_launch, run_toolkit, tiny_recipe
from toolkit.train.checkpoint import list_checkpoints, read_checkpoint_meta
from toolkit.config import ModelConfig, load_config
from toolkit.model import SVG
from toolkit.train.runlog import read_metrics
from toolkit.train.schedules import learning_rate
from toolkit.train.setup import param_checksum



@pytest.fixture
def shards(pushing_shards) -> str:
    return pushing_shards


def recipe(tmp_path: Path, shards: str, name: str = "recipe.yaml", **sections) -> Path:
    return tiny_recipe(tmp_path / name, shards, tmp_path / "run", **sections)


@pytest.fixture
def aot_eager_compile(monkeypatch):
    """`Module.compile` with the "aot_eager" backend: dynamo and AOT autograd without inductor (see the compiled
    training test for why)."""
    import functools

    monkeypatch.setattr(torch.nn.Module, "compile",
                        functools.partialmethod(torch.nn.Module.compile, backend="aot_eager"))


PUSHING_MODEL_ARGS = {"cond_dim": 7, "n_past": 2, "channels": 3}
"""`setup.build_model`'s data arguments for the pushing shards."""


cvae = run_toolkit


def losses(run_dir: Path) -> list[tuple]:
    """Every logged training/validation number except timings."""
    return [sorted((k, v) for k, v in r.items() if k != "seq_per_s")
            for r in read_metrics(run_dir) if r["kind"] in ("step", "epoch", "val")]


@pytest.mark.slow
def test_two_process_ddp_training_keeps_ranks_identical(tmp_path, shards):
    path = recipe(tmp_path, shards, train={"epochs": 2, "epoch_size": 3})
    proc = subprocess.run(accelerate_launch("-m", "toolkit", "train", str(path)), capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = read_metrics(tmp_path / "run", "final")[-1]
    assert final["world_size"] == 2 and final["step"] == 6
    sums = final["param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # both ranks hold bit-identical weights
    torch.manual_seed(1)
    initial = param_checksum(SVG(ModelConfig(**TINY_MODEL), cond_dim=7, n_past=2))
    assert sums[0] != initial  # ... and they did train
    val = read_metrics(tmp_path / "run", "val")[-1]
    assert val["count"] == 4  # the validation split scored once over both ranks


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def interrupted_run(tmp_path: Path, path: Path, until, sig: int) -> tuple[Path, subprocess.Popen, str, str]:
    """Train `path` uninterrupted into tmp_path/a, then again into tmp_path/b and send `sig` once `until(b)`."""
    reference = cvae("train", str(path), "--train.run_dir=" + str(tmp_path / "a"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "train", str(path), "--train.run_dir=" + str(run)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: until(run), proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return run, proc, out, err


def test_resume_after_kill_9_logs_the_same_losses(tmp_path, shards):
    path = recipe(tmp_path, shards, train={"epochs": 4, "epoch_size": 6, "eval_every": 2})
    # Kill during the third epoch: after the epoch_000002 checkpoint, with some of epoch 3 already logged.
    run, _, _, _ = interrupted_run(tmp_path, path, lambda run: any(
        r["kind"] == "step" and r["epoch"] == 2 for r in read_metrics(run)), signal.SIGKILL)
    assert [p.name for p in list_checkpoints(run)][-1] == "epoch_000002"
    resumed = cvae("train", str(path), "--train.run_dir=" + str(run), "--train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "epoch_000002" in resumed.stdout
    assert losses(run) == losses(tmp_path / "a")
    assert len(losses(run)) == 4 * 6 + 4 + 2  # step + epoch + val records, none duplicated


def test_sigterm_saves_a_checkpoint_and_resume_is_exact(tmp_path, shards):
    # The signal goes once 5 steps are logged; 115 more (~7 s) leave room for a busy CI machine to
    # deliver it: with 40, a loaded machine once let the epoch end first.
    epoch_size = 120
    path = recipe(tmp_path, shards, train={"epochs": 1, "epoch_size": epoch_size, "eval_every": 1})
    run, proc, out, err = interrupted_run(tmp_path, path, lambda run: len(read_metrics(run, "step")) >= 5,
                                         signal.SIGTERM)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by a signal" in out
    saved = list_checkpoints(run)
    assert len(saved) == 1 and "_step_" in saved[0].name
    state, _ = read_checkpoint_meta(saved[0])
    assert state.epoch == 0 and 5 <= state.step_in_epoch < epoch_size and state.global_step == state.step_in_epoch
    assert read_metrics(run, "final")[-1]["stopped"] is True
    resumed = cvae("train", str(path), "--train.run_dir=" + str(run), "--train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(run) == losses(tmp_path / "a")


def test_bad_recipe_keys_and_values_give_clear_errors(tmp_path, shards):
    path = recipe(tmp_path, shards)
    for args, message in [
        (["--model.zdim=3"], "unknown key 'model.zdim'; did you mean 'model.z_dim'?"),
        (["--schedule.kl_anneal=cyclic"], "'schedule.kl_anneal' must be one of monotonic, cyclical, none"),
        (["--train.epochs=ten"], "'train.epochs' must be int, got 'ten'"),
        (["--model.decoder_cond=yes"], "'model.decoder_cond' must be one of none, step, step_and_skip, got True"),
        (["--data.shards=" + str(tmp_path / "nowhere")], "cannot read the shard manifest"),
    ]:
        proc = cvae("train", str(path), *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  g_dim: 16\n  prior: fixed\n optim: {}\n")
    proc = cvae("train", str(bad))
    assert proc.returncode == 2 and f"{bad} line" in proc.stderr and "invalid YAML" in proc.stderr
    bad.write_text(yaml.safe_dump({"modle": {"g_dim": 3}}))
    proc = cvae("train", str(bad))
    assert proc.returncode == 2 and f"{bad}: unknown key 'modle'; did you mean 'model'?" in proc.stderr


def test_a_run_is_not_overwritten_and_other_model_configs_are_refused(tmp_path, shards):
    path = recipe(tmp_path, shards, train={"epochs": 1, "epoch_size": 2})
    assert cvae("train", str(path)).returncode == 0
    again = cvae("train", str(path))
    assert again.returncode == 2 and "already holds checkpoints" in again.stderr
    assert "--train.resume=auto" in again.stderr
    other = cvae("train", str(path), "--train.resume=auto", "--model.z_dim=8", "--train.epochs=2")
    assert other.returncode == 2 and "different model configuration" in other.stderr
    assert "model.z_dim: checkpoint 4, now 8" in other.stderr


def test_nonfinite_losses_are_skipped_then_abort_keeps_the_last_checkpoint(tmp_path, shards, monkeypatch):
    from accelerate.state import AcceleratorState, GradientState

    from toolkit.errors import ToolkitError
    from toolkit.train.loop import train

    real_forward = SVG.forward
    calls = {"n": 0}

    def flaky_forward(self, frames, cond, tfr=1.0, beta=1.0):
        out = real_forward(self, frames, cond, tfr, beta)
        calls["n"] += 1
        if calls["n"] in (2, 3) or calls["n"] > 4:  # two bad steps in the first epoch, then only bad ones
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    monkeypatch.setattr(SVG, "forward", flaky_forward)
    cfg = load_config(recipe(tmp_path, shards, train={"epochs": 3, "epoch_size": 4, "max_nonfinite": 4,
                                                      "eval_every": 10}))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    with pytest.raises(ToolkitError, match=r"not finite in 5 steps .* Last good checkpoint: .*epoch_000001"):
        train(cfg)
    epochs = read_metrics(tmp_path / "run", "epoch")
    assert [e["nonfinite"] for e in epochs] == [2]
    assert [r["step"] for r in read_metrics(tmp_path / "run", "step")] == [1, 4]  # only finite steps are logged
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch_000001"]
    state, _ = read_checkpoint_meta(tmp_path / "run" / "checkpoints" / "epoch_000001")
    assert state.nonfinite == 2 and state.global_step == 4
    weights = load_file(tmp_path / "run" / "checkpoints" / "epoch_000001" / "model.safetensors")
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())  # skipped steps never touched them


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    for path in sorted((REPO / "recipes" / "accelerate").glob("*.yaml")):
        config = load_config_from_file(str(path))
        assert config.num_processes >= 1 and config.mixed_precision in ("no", "bf16", "fp16"), path


def test_recipes_load():
    for path in sorted((REPO / "recipes" / "train").glob("*.yaml")):
        load_config(path)


def test_wandb_offline_run_is_continued_on_resume(tmp_path, shards):
    path = recipe(tmp_path, shards, train={"epochs": 1, "epoch_size": 2}, wandb={"mode": "auto"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", HOME=str(tmp_path), WANDB_BASE_URL="http://127.0.0.1:9")  # no key, no server
    first = cvae("train", str(path), env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (tmp_path / "run" / "wandb_run_id").read_text().strip()
    second = cvae("train", str(path), "--train.resume=auto", "--train.epochs=2", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    offline = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(run_id) for p in offline)
    history = offline[-1] / f"run-{run_id}.wandb"
    assert history.is_file() and history.stat().st_size > 0
    assert json.loads((tmp_path / "run" / "checkpoints" / "epoch_000002" / "train_state.json").read_text())[
        "train_state"]["wandb_run_id"] == run_id


def test_accumulation_clipping_bf16_learned_prior_and_schedules_train_together(tmp_path, shards):
    path = recipe(tmp_path, shards, model={"prior": "learned"},
                  optim={"grad_accum": 2, "grad_clip": 1.0, "lr_schedule": "cosine", "warmup_steps": 1,
                         "lr_final": 0.1},
                  data={"random_window": True},
                  schedule={"kl_anneal": "cyclical", "kl_anneal_cycle": 2, "kl_per_step": True, "tfr": 1.0,
                            "tfr_decay_step": 0.5, "tfr_lower_bound": 0.2},
                  train={"epochs": 2, "epoch_size": 4, "eval_every": 2, "mixed_precision": "bf16"})
    proc = cvae("train", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mixed precision bf16" in proc.stdout
    steps = read_metrics(tmp_path / "run", "step")
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # 4 batches per epoch, 2 per optimizer step
    assert all(torch.isfinite(torch.tensor([r["loss"], r["mse"], r["kld"]])).all() for r in steps)
    assert [round(r["tfr"], 6) for r in steps] == [1.0, 1.0, 0.5, 0.5]  # decays after epoch 0
    cfg = load_config(path)  # warm-up, then a cosine from 0.002 down to 0.0002 at the last of the 4 steps
    assert [r["lr"] for r in steps] == [learning_rate(cfg.optim, k, 4) for k in range(4)]
    assert steps[0]["lr"] == 0.002 and steps[-1]["lr"] == pytest.approx(0.0002)
    betas = [r["beta"] for r in steps]  # cyclical, per step: 2 cycles over 4 steps, ramp over half a cycle
    assert betas[0] == 0.0 and betas[2] == 0.0 and betas[1] > 0 and betas[3] > 0
    state, _ = read_checkpoint_meta(tmp_path / "run" / "checkpoints" / "epoch_000002")
    assert state.global_step == 4 and state.schedule["tfr"] == 0.5


def test_unconditional_training_on_moving_digits(tmp_path):
    from toolkit.data.shards.convert import convert
    from toolkit.data.worlds.synth import generate_dataset

    generate_dataset(tmp_path / "digits", "shapes", {"train": 8, "validate": 2, "test": 0}, progress=False)
    convert(tmp_path / "digits", tmp_path / "shards", maxcount=4, progress=False)
    path = recipe(tmp_path, str(tmp_path / "shards"), train={"epochs": 1, "epoch_size": 2})
    proc = cvae("train", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, meta = read_checkpoint_meta(tmp_path / "run" / "checkpoints" / "epoch_000001")
    assert meta["model_args"]["cond_dim"] == 0 and read_metrics(tmp_path / "run", "val")[-1]["count"] == 2


def test_a_sweep_agent_run_gets_its_own_run_dir_and_run_id(tmp_path, shards):
    path = recipe(tmp_path, shards, train={"epochs": 1, "epoch_size": 1, "run_dir": str(tmp_path / "sweep/{run_id}")})
    env = {**os.environ, "WANDB_RUN_ID": "abc123", "WANDB_SWEEP_ID": "sw1"}
    proc = cvae("train", str(path), "--schedule.kl_anneal=cyclical", "--optim.lr=0.001", env=env)  # as ${args}
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "sweep" / "abc123"
    assert (run / "wandb_run_id").read_text().strip() == "abc123"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["schedule"]["kl_anneal"] == "cyclical" and cfg["optim"]["lr"] == 0.001
    env = {k: v for k, v in env.items() if not k.startswith("WANDB_")}  # no agent: a new id names dir and run
    assert cvae("train", str(path), env=env).returncode == 0
    (run,) = [p for p in (tmp_path / "sweep").iterdir() if p.name != "abc123"]
    assert (run / "wandb_run_id").read_text().strip() == run.name


def test_compiled_training_matches_eager_and_keeps_the_checkpoint_format(tmp_path, shards, aot_eager_compile):
    # The trainer's model as `cvae train --train.compile=true` builds it (`setup.build_model`): one teacher-forced
    # step's loss and gradients against the eager model's, at equal weights and noise. Dynamo's capture and AOT
    # autograd's joint graph are what this checks, through the "aot_eager" backend: inductor's C++ code generation
    # takes 7 minutes for this step on a 2-core CPU. Inductor itself runs in tests/test_cuda.py (GPU) and in
    # `benchmarks/throughput.py --compile on` (CPU).
    from torch._dynamo.utils import counters

    from toolkit.train.setup import build_model

    path = recipe(tmp_path, shards)
    models = {flag: build_model(load_config(path, [f"--train.compile={flag}"]), PUSHING_MODEL_ARGS).train()
              for flag in ("false", "true")}
    g = torch.Generator().manual_seed(3)
    frames, cond = torch.rand(4, 12, 3, 64, 64, generator=g), torch.randn(4, 12, 7, generator=g)
    noise = torch.randn(11, 4, TINY_MODEL["z_dim"], generator=g)
    counters.clear()
    results = {}
    for flag, model in models.items():
        out = model(frames, cond, True, 1e-4, noise)
        out["loss"].backward()
        results[flag] = (out["loss"].item(), {n: p.grad for n, p in model.named_parameters()})
    assert counters["stats"]["unique_graphs"] >= 2  # dynamo captured the encoder and the decoder
    assert [m.encoder._compiled_call_impl is not None for m in models.values()] == [False, True]
    (eager_loss, eager_grads), (loss, grads) = results["false"], results["true"]
    assert loss == pytest.approx(eager_loss, rel=1e-5)  # decomposed ops, other rounding
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():  # rounding grows through 16 BatchNorm backwards: relative to each tensor's max
        scale = eager_grads[name].abs().max().item()
        assert (grad - eager_grads[name]).abs().max().item() <= 1e-3 * scale + 1e-8, name
    # compiled in place: the state dict, hence the checkpoints, are the eager model's (no `_orig_mod.` prefixes)
    assert models["true"].state_dict().keys() == models["false"].state_dict().keys()


def test_batchnorm_reestimation_of_a_compiled_model_runs_eager_with_the_eager_statistics(tmp_path, shards,
                                                                                         aot_eager_compile):
    # Re-estimation sets momentum None, whose `.item()` broke dynamo's graph in every BatchNorm layer: each
    # layer's norm recompiled (hitting the recompile limit) and the training frames were skipped afterwards.
    import contextlib
    from types import SimpleNamespace

    from torch._dynamo.utils import counters

    from toolkit.train.batchnorm import batchnorm_layers, reestimate_batchnorm
    from toolkit.train.setup import build_model

    path = recipe(tmp_path, shards)
    acc = SimpleNamespace(device=torch.device("cpu"), process_index=0, num_processes=1,
                          autocast=contextlib.nullcontext)
    stats = {}
    for flag in ("false", "true"):
        cfg = load_config(path, [f"--train.compile={flag}"])
        model = build_model(cfg, PUSHING_MODEL_ARGS).train()
        counters.clear()
        reestimate_batchnorm(model, shards, cfg, acc, epoch=1, batches=2)
        assert not counters["graph_break"] and not counters["stats"]["unique_graphs"], flag
        stats[flag] = [torch.cat([m.running_mean, m.running_var]) for m in batchnorm_layers(model)]
    assert len(stats["true"]) == len(stats["false"]) > 0
    for compiled, eager in zip(stats["true"], stats["false"]):
        assert torch.equal(compiled, eager)  # the same eager arithmetic on the same batches and noise
