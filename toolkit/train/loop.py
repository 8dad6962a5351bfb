"""`cvae train RECIPE [--section.key=value ...]`: the training loop on HuggingFace Accelerate.

    accelerate launch --config_file recipes/accelerate/cpu.yaml -m toolkit train recipes/train/demo.yaml

`train` reads top to bottom: `setup` (checks the data against the recipe, builds or restores the run), then per
epoch `run_epoch` (exactly `epoch_size` batches per rank from a freshly seeded loader, teacher forcing and KL
weight from the schedules) and `end_epoch` (the epoch record; every `eval_every` epochs the validation split
is scored in float32 and the best checkpoint kept; every `checkpoint_every` epochs a checkpoint), and last
`summarize`. SIGTERM or SIGINT finishes the current step, saves a checkpoint and returns; `--train.resume=auto`
continues from the newest valid checkpoint and, on the same world size, logs exactly what an uninterrupted
run logs.
"""

from __future__ import annotations

import math
import os
import time
from functools import partial

from accelerate.utils import gather_object
from tqdm import tqdm

from toolkit.config import Config
from toolkit.data.loader import train_loader
from toolkit.errors import ToolkitError
from toolkit.train import checkpoint as ckpt
from toolkit.train.batchnorm import reestimate_batchnorm
from toolkit.train.runlog import read_metrics
from toolkit.train.schedules import learning_rate, schedule_values, teacher_forcing_on
from toolkit.train.setup import Run, param_checksum, setup
from toolkit.train.step import EPOCH_SUMS, set_learning_rate, train_micro_batch
from toolkit.train.validation import validate


def train(cfg: Config) -> dict:
    """Train an SVG model as configured; returns a summary (final/best validation PSNR, steps, run dir)."""
    run = setup(cfg)
    try:
        if run.state.validation_due:  # a stop on the last batch of an epoch left its validation to this run
            validate(run)
            ckpt.save_checkpoint(run.accelerator, run.run_dir, ckpt.checkpoint_name(run.state.epoch), run.state,
                                 run.meta, cfg.train.keep_last)
        while run.state.epoch < cfg.train.epochs and not run.stopped:
            timing = run_epoch(run)
            if not run.stopped or run.state.step_in_epoch == cfg.train.epoch_size:
                end_epoch(run, timing)
    finally:
        run.stop.restore()
    return summarize(run)


def run_epoch(run: Run) -> dict:
    """Train the rest of epoch `state.epoch`; returns {"seconds", "batches" trained, "data_s": seconds spent
    waiting for batches}. A stop signal ends it early with a mid-epoch checkpoint (unless it came on the last
    batch: then the epoch is complete)."""
    cfg, state, acc = run.cfg, run.state, run.accelerator
    d, epoch, start = cfg.data, state.epoch, state.step_in_epoch
    loader = train_loader(run.manifest, d.train_split, d.batch_size, cfg.train.epoch_size, d.n_past + d.n_future,
                          seed=cfg.train.seed, epoch=epoch, rank=acc.process_index, world_size=acc.num_processes,
                          num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer, random_window=d.random_window,
                          use_cond=d.use_cond, ready=cfg.optim.grad_accum + 1)  # enough to reach a stop point
    batches = iter(loader)
    for _ in range(start):  # a mid-epoch checkpoint: skip the batches already trained on
        next(batches)
    meter = run.meter
    meter.begin_epoch(state.epoch_sums)
    step = run.graphed or partial(train_micro_batch, acc, run.model, run.optimizer, meter,
                                  grad_clip=cfg.optim.grad_clip)
    steps_per_epoch = cfg.train.epoch_size // cfg.optim.grad_accum
    bar = tqdm(total=cfg.train.epoch_size, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
               disable=not (acc.is_main_process and cfg.train.progress), leave=False, dynamic_ncols=True)
    tic = time.perf_counter()
    waiting = 0.0
    for i in range(start, cfg.train.epoch_size):
        tfr, beta = schedule_values(cfg.schedule, epoch, i // cfg.optim.grad_accum, steps_per_epoch, cfg.train.epochs)
        wait = time.perf_counter()
        frames, cond = next(batches).to(acc.device)
        waiting += time.perf_counter() - wait
        use_tf = teacher_forcing_on(cfg.train.seed, state.global_step, tfr)
        # the learning rate is a pure function of the step: nothing to checkpoint
        lr = learning_rate(cfg.optim, state.global_step, steps_per_epoch * cfg.train.epochs)
        set_learning_rate(run.optimizer, lr)
        stepped = step(frames, cond, use_tf, beta)
        bar.update(1)
        state.step_in_epoch = i + 1
        state.schedule = {"tfr": tfr, "beta": beta}
        if stepped:
            state.global_step += 1
            if state.global_step % cfg.train.log_every == 0:
                log_step(run, meter.read(), bar)
        if run.stop.agreed() and stepped:  # every rank stops after the same optimizer step
            run.stopped = True
            break
    bar.close()
    del batches  # shuts the epoch's (endless) loader workers down before validating or saving
    values = meter.read()  # the sync that also waits for the epoch's device work
    seconds = time.perf_counter() - tic
    state.epoch_sums = values["epoch_sums"]
    check_nonfinite(run, values["skipped"])
    if run.stopped and state.step_in_epoch < cfg.train.epoch_size:
        # a checkpoint to resume from, saved in the launcher's grace period: the BatchNorm statistics are left
        # as training had them (training never reads them; the resumed run re-estimates before scoring)
        path = ckpt.save_checkpoint(acc, run.run_dir, ckpt.checkpoint_name(epoch, state.step_in_epoch), state,
                                    run.meta, cfg.train.keep_last)
        run.say(f"stopped by a signal in epoch {epoch + 1} after batch {state.step_in_epoch}: saved {path}; "
                "continue with --train.resume=auto")
    return {"seconds": seconds, "batches": state.step_in_epoch - start, "data_s": waiting}


def motion_text(val: dict) -> str:
    """The motion-region PSNR pair of a validation record (absent from records written before it existed)."""
    if "motion_psnr" not in val:
        return ""
    return f"; moving pixels {val['motion_psnr']:.2f} vs {val['baseline_motion_psnr']:.2f} dB"


def log_step(run: Run, values: dict, bar) -> None:
    """A step record (the rank-mean losses of the step's last micro-batch; none for a skipped step) and the
    non-finite guard."""
    state = run.state
    if values["finite"]:
        record = {"kind": "step", "epoch": state.epoch, "step": state.global_step,
                  **{k: values[k] for k in ("loss", "mse", "kld", "grad_norm", "teacher_forced")},
                  "beta": state.schedule["beta"], "tfr": state.schedule["tfr"],
                  "lr": float(run.optimizer.param_groups[0]["lr"])}
        run.log.write(record)
        run.accelerator.log({f"train/{k}": v for k, v in record.items() if k not in ("kind", "step")},
                            step=state.global_step)
        bar.set_postfix(loss=f"{values['loss']:.4f}", tfr=f"{state.schedule['tfr']:.2f}")
    check_nonfinite(run, values["skipped"])


def check_nonfinite(run: Run, skipped: int) -> None:
    """Count the steps skipped since the last read; stop the run once there are more than max_nonfinite
    (skipped steps never touch the weights, so the checkpoints stay good)."""
    state, cfg = run.state, run.cfg
    state.nonfinite += skipped
    if state.nonfinite > cfg.train.max_nonfinite:
        last = ckpt.list_checkpoints(run.run_dir)
        raise ToolkitError(f"the loss was not finite in {state.nonfinite} steps (limit train.max_nonfinite="
                           f"{cfg.train.max_nonfinite}); stopped. Last good checkpoint: "
                           f"{last[-1] if last else 'none'}. Try a lower optim.lr or set optim.grad_clip")


def end_epoch(run: Run, timing: dict) -> None:
    """The epoch record, validation (deferred to the resumed run when a signal stopped this one), checkpoints,
    then the perf record: throughput and where the epoch's time went (training, waiting for data, BatchNorm
    re-estimation, validation, checkpoint)."""
    cfg, state = run.cfg, run.state
    sums = dict(zip(EPOCH_SUMS, state.epoch_sums))
    n = max(sums["batches"], 1)
    record = {"kind": "epoch", "epoch": state.epoch, "step": state.global_step, "loss": sums["loss"] / n,
              "mse": sums["mse"] / n, "kld": sums["kld"] / n, **state.schedule,
              "lr": float(run.optimizer.param_groups[0]["lr"]), "nonfinite": state.nonfinite}
    run.log.write(record)
    run.accelerator.log({f"epoch/{k}": v for k, v in record.items() if k not in ("kind", "step")},
                        step=state.global_step)
    perf = {"kind": "perf", "epoch": state.epoch, "step": state.global_step,
            "seq_per_s": timing["batches"] * cfg.data.batch_size * run.accelerator.num_processes
            / max(timing["seconds"], 1e-9), "train_s": timing["seconds"], "data_s": timing["data_s"]}
    state.epoch, state.step_in_epoch, state.epoch_sums = state.epoch + 1, 0, []
    perf.update(_after_epoch(run))
    perf["rss_mb"] = resident_mb()  # measurements: the only records that differ between identical runs
    run.log.write(perf)
    run.accelerator.log({f"perf/{k}": v for k, v in perf.items() if k not in ("kind", "step")}, step=perf["step"])


def _after_epoch(run: Run) -> dict:
    """BatchNorm re-estimation, validation and checkpoint as due; returns the seconds each took."""
    cfg, state = run.cfg, run.state
    last_epoch = state.epoch == cfg.train.epochs
    validating = state.epoch % cfg.train.eval_every == 0 or last_epoch
    saving = state.epoch % cfg.train.checkpoint_every == 0 or last_epoch or run.stopped
    times = {"bn_s": 0.0, "val_s": 0.0, "ckpt_s": 0.0}
    tic = time.perf_counter()
    if validating or saving:
        reestimate_batchnorm(run.unwrapped, run.manifest, cfg, run.accelerator, state.epoch, cfg.train.bn_batches)
        times["bn_s"], tic = time.perf_counter() - tic, time.perf_counter()
    if validating:
        state.validation_due = True
        if not run.stopped:
            validate(run)
        times["val_s"], tic = time.perf_counter() - tic, time.perf_counter()
    if saving:
        path = ckpt.save_checkpoint(run.accelerator, run.run_dir, ckpt.checkpoint_name(state.epoch), state, run.meta,
                                    cfg.train.keep_last)
        times["ckpt_s"] = time.perf_counter() - tic
        if run.stopped:
            run.say(f"stopped by a signal at the end of epoch {state.epoch}: saved {path}; continue with "
                    "--train.resume=auto")
    return times


def resident_mb() -> float:
    """This process's resident memory in MiB (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarize(run: Run) -> dict:
    """The final record: where the run ended, its last and best validation, the ranks' weight checksums."""
    state, acc = run.state, run.accelerator
    world = acc.num_processes
    checksums = gather_object([param_checksum(run.unwrapped)]) if world > 1 else [param_checksum(run.unwrapped)]
    summary = {"kind": "final", "epoch": state.epoch, "step": state.global_step, "world_size": world,
               "stopped": run.stopped, "best_psnr": None if math.isinf(state.best_psnr) else state.best_psnr,
               "best_epoch": state.best_epoch, "param_checksums": checksums, "nonfinite": state.nonfinite,
               "run_dir": str(run.run_dir)}
    last_val = run.last_val
    if last_val is None and acc.is_main_process and not run.stopped:  # nothing left to train: the last one
        last_val = next(iter(read_metrics(run.run_dir, "val")[::-1]), None)
    if last_val is not None:
        summary.update(val_psnr=last_val["psnr"], baseline_psnr=last_val["baseline_psnr"], val_ssim=last_val["ssim"],
                       baseline_ssim=last_val["baseline_ssim"], val_count=last_val["count"])
        run.say(f"final validation PSNR {last_val['psnr']:.2f} dB vs copy-last-frame baseline "
                f"{last_val['baseline_psnr']:.2f} dB (SSIM {last_val['ssim']:.3f} vs {last_val['baseline_ssim']:.3f}"
                f"{motion_text(last_val)}) on {last_val['count']} sequences after {state.epoch} epoch(s); best "
                f"{state.best_psnr:.2f} dB after epoch {state.best_epoch}; run dir {run.run_dir}")
    run.log.write(summary)
    acc.end_training()
    return summary

