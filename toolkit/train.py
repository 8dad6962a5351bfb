"""`cvae train RECIPE [--section.key=value ...]`: the training loop, one function on HuggingFace Accelerate.

    accelerate launch --config_file recipes/accelerate/cpu.yaml -m toolkit train recipes/train/demo.yaml

Each epoch a freshly seeded loader gives every rank exactly `epoch_size` batches; the teacher forcing ratio and
KL weight come from the schedules; every `eval_every` epochs the validation split is scored (PSNR/SSIM against
copy-last-frame) and the best checkpoint kept; every `checkpoint_every` epochs the state is saved. SIGTERM or
SIGINT finishes the current step, saves a mid-epoch checkpoint and returns. `--train.resume=auto` continues
from the newest checkpoint and, on the same world size, logs exactly the losses of an uninterrupted run.
"""

from __future__ import annotations

import math
import signal
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from tqdm import tqdm

from toolkit import checkpoint as ckpt
from toolkit.config import Config, dump_yaml, to_dict
from toolkit.data.loader import eval_loader, train_loader
from toolkit.data.manifest import read_manifest
from toolkit.errors import ToolkitError
from toolkit.evaluate import EvalResult, broadcast_buffers, evaluate
from toolkit.fsutil import atomic_write_text
from toolkit.model import SVG
from toolkit.schedules import schedule_values, teacher_forcing_on
from toolkit.tracking import (MetricsLog, init_wandb, new_run_id, read_metrics, resolve_wandb_mode, store_run_id,
                              stored_run_id)
from toolkit.video import compose, save_gif, with_context

SUMS = ("loss", "mse", "kld", "n")


class StopSignal:
    """Remembers a SIGTERM/SIGINT; the ranks agree on it at the next step, checkpoint and return."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        signal.signal(signum, self.previous[signum])  # a second signal acts as it normally would

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def param_checksum(model: torch.nn.Module) -> list[float]:
    """Two float64 sums over all parameters (plain and position-weighted): equal on ranks in sync."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()]).cpu()
    return [float(flat.sum()), float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum())]


def validate(cfg: Config, accelerator: Accelerator, model: SVG, manifest, run_dir: Path, epoch: int,
             log: MetricsLog, step: int) -> EvalResult:
    d = cfg.data
    loader = eval_loader(manifest, d.val_split, d.batch_size, d.n_past + d.n_future, rank=accelerator.process_index,
                         world_size=accelerator.num_processes, num_workers=d.num_workers, limit=d.val_sequences,
                         use_cond=d.use_cond)
    broadcast_buffers(model, accelerator)
    keep = cfg.train.num_gifs if accelerator.is_main_process else 0
    result, kept = evaluate(model, loader, accelerator, d.n_past, d.n_future, seed=cfg.train.seed, keep=keep)
    record = {"kind": "val", "epoch": epoch, "step": step, "count": result.count, "n_past": d.n_past, **result.mean,
              "psnr_per_frame": result.per_frame["psnr"], "ssim_per_frame": result.per_frame["ssim"],
              "baseline_psnr_per_frame": result.per_frame["baseline_psnr"]}
    log.write(record)
    values = {f"val/{k}": v for k, v in result.mean.items()}
    values.update({f"val/psnr_frame_{d.n_past + 1 + t:02d}": v  # 1-based frame numbers, as `cvae eval` prints
                   for t, v in enumerate(result.per_frame["psnr"])})
    if kept:
        rows = [[gt, with_context(gt[:d.n_past], pred)] for _, gt, pred in kept]
        gif = save_gif(run_dir / "samples" / f"epoch_{epoch + 1:06d}.gif", compose(rows, d.n_past))
        if cfg.wandb.log_videos and accelerator.trackers:
            import wandb
            values["val/prediction"] = wandb.Video(str(gif), format="gif")
    accelerator.log(values, step=step)
    return result


def train(cfg: Config) -> dict:
    """Train an SVG model as configured; returns a summary (final/best validation PSNR, steps, run dir)."""
    wandb_mode = resolve_wandb_mode(cfg.wandb.mode)
    mp = None if cfg.train.mixed_precision == "auto" else cfg.train.mixed_precision
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mp,
                              gradient_accumulation_steps=cfg.optim.grad_accum,
                              log_with=None if wandb_mode == "disabled" else "wandb")
    main = accelerator.is_main_process
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        warnings.warn("fp16 mixed precision needs a GPU; on CPU accelerate trains in float32 (use bf16 on CPU)")
    run_dir = Path(cfg.train.run_dir)
    if "{run_id}" in cfg.train.run_dir:
        run_dir = Path(cfg.train.run_dir.replace("{run_id}", broadcast_object_list([new_run_id()])[0]))
    resume = ckpt.resume_target(cfg.train.resume, run_dir)
    d, config = cfg.data, to_dict(cfg)
    manifest = read_manifest(d.shards)
    window = d.n_past + d.n_future
    model_args = {"cond_dim": manifest.cond_dim if d.use_cond else 0, "n_past": d.n_past, "channels": 3}
    meta = {"config": config, "model_args": model_args}
    set_seed(cfg.train.seed)
    model = SVG(cfg.model, **model_args)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                 weight_decay=cfg.optim.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    set_seed(cfg.train.seed, device_specific=True)  # distinct noise per rank; identical weights from above
    state = ckpt.TrainState()
    if resume is not None:
        state = ckpt.load_checkpoint(accelerator, resume, meta)
    log = MetricsLog(run_dir, main)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_temporaries(run_dir)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        log.truncate(state.global_step)  # drop what a killed run logged after its last checkpoint
        state.wandb_run_id = state.wandb_run_id or stored_run_id(run_dir) or new_run_id()
        store_run_id(run_dir, state.wandb_run_id)
    if accelerator.log_with:
        init_wandb(accelerator, cfg.wandb, run_dir, state.wandb_run_id, wandb_mode, config)
    unwrapped = accelerator.unwrap_model(model)
    if main:
        print(f"{unwrapped.param_count():,} parameters, {accelerator.num_processes} process(es) on "
              f"{accelerator.device.type}, mixed precision {accelerator.mixed_precision}, run dir {run_dir}"
              + (f", resuming from {resume}" if resume else ""))
    steps_per_epoch = cfg.train.epoch_size // cfg.optim.grad_accum
    world, stop, result, stopped = accelerator.num_processes, StopSignal(), None, False
    try:
        while state.epoch < cfg.train.epochs and not stopped:
            epoch, start = state.epoch, state.step_in_epoch
            sums = state.epoch_sums or dict.fromkeys(SUMS, 0.0)
            loader = train_loader(manifest, d.train_split, d.batch_size, cfg.train.epoch_size, window,
                                  seed=cfg.train.seed, epoch=epoch, rank=accelerator.process_index, world_size=world,
                                  num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer,
                                  random_window=d.random_window, use_cond=d.use_cond)
            batches = iter(loader)
            for _ in range(start):  # a mid-epoch checkpoint: skip the batches already trained on
                next(batches)
            bar = tqdm(total=cfg.train.epoch_size, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                       disable=not (main and cfg.train.progress), leave=False, dynamic_ncols=True)
            tic, window_bad = time.perf_counter(), False
            for i in range(start, cfg.train.epoch_size):
                batch = next(batches)
                tfr, beta = schedule_values(cfg.schedule, epoch, i // cfg.optim.grad_accum, steps_per_epoch,
                                            cfg.train.epochs)
                use_tf = teacher_forcing_on(cfg.train.seed, state.global_step, tfr)
                with accelerator.accumulate(model):
                    out = model(batch.frames.to(accelerator.device), batch.cond.to(accelerator.device), use_tf, beta)
                    loss = out["loss"].detach()
                    stats = torch.stack([loss, out["mse"].detach(), out["kld"].detach(), ~torch.isfinite(loss),
                                         torch.tensor(stop.signum != 0, device=loss.device)]).double()
                    stats = accelerator.reduce(stats, "sum").tolist()  # one sync; every rank sees the same flags
                    bad = stats[3] > 0
                    window_bad |= bad  # a non-finite micro-batch drops its whole accumulation window
                    if not window_bad:
                        accelerator.backward(out["loss"])
                    if accelerator.sync_gradients:
                        if not window_bad:
                            if cfg.optim.grad_clip > 0:
                                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                            optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        state.global_step += 1
                        window_bad = False
                bar.update(1)
                lr = optimizer.param_groups[0]["lr"]
                if bad:
                    state.nonfinite += 1
                    if state.nonfinite > cfg.train.max_nonfinite:
                        last = ckpt.list_checkpoints(run_dir)
                        raise ToolkitError(
                            f"the loss was not finite in {state.nonfinite} steps (limit train.max_nonfinite="
                            f"{cfg.train.max_nonfinite}); stopped. Last good checkpoint: "
                            f"{last[-1] if last else 'none'}. Try a lower optim.lr or set optim.grad_clip")
                else:
                    for k, v in zip(SUMS, stats[:3]):
                        sums[k] += v / world
                    sums["n"] += 1
                    bar.set_postfix(loss=f"{stats[0] / world:.4f}", tfr=f"{tfr:.2f}", beta=f"{beta:.2g}")
                    if accelerator.sync_gradients and state.global_step % cfg.train.log_every == 0:
                        record = {"kind": "step", "epoch": epoch, "step": state.global_step, "loss": stats[0] / world,
                                  "mse": stats[1] / world, "kld": stats[2] / world, "beta": beta, "tfr": tfr, "lr": lr}
                        log.write(record)
                        accelerator.log({f"train/{k}": v for k, v in record.items() if k not in ("kind", "step")},
                                        step=state.global_step)
                if stats[4] > 0 and accelerator.sync_gradients:  # SIGTERM/SIGINT on some rank: all stop here
                    stopped = True
                    break
            bar.close()
            del batches  # shuts the epoch's (endless) loader workers down before validating or saving
            state.schedule = {"tfr": tfr, "beta": beta}
            if stopped and i + 1 < cfg.train.epoch_size:
                state.step_in_epoch, state.epoch_sums = i + 1, sums
                path = ckpt.save_checkpoint(accelerator, run_dir, ckpt.checkpoint_name(epoch, i + 1), state, meta,
                                            cfg.train.keep_last)
                if main:
                    print(f"stopped by a signal in epoch {epoch + 1} after batch {i + 1}: saved {path}; continue "
                          "with --train.resume=auto")
                break
            seconds = time.perf_counter() - tic
            n = max(sums["n"], 1)
            record = {"kind": "epoch", "epoch": epoch, "step": state.global_step, "loss": sums["loss"] / n,
                      "mse": sums["mse"] / n, "kld": sums["kld"] / n, "beta": beta, "tfr": tfr, "lr": lr,
                      "seq_per_s": (cfg.train.epoch_size - start) * d.batch_size * world / seconds,
                      "nonfinite": state.nonfinite}
            log.write(record)
            accelerator.log({f"epoch/{k}": v for k, v in record.items() if k not in ("kind", "step")},
                            step=state.global_step)
            state.epoch, state.step_in_epoch, state.epoch_sums = epoch + 1, 0, {}
            last_epoch = state.epoch == cfg.train.epochs
            if (state.epoch % cfg.train.eval_every == 0 or last_epoch) and not stopped:
                result = validate(cfg, accelerator, unwrapped, manifest, run_dir, epoch, log, state.global_step)
                if result.mean["psnr"] > state.best_psnr:
                    state.best_psnr, state.best_epoch = result.mean["psnr"], state.epoch
                    ckpt.save_checkpoint(accelerator, run_dir, ckpt.BEST, state, meta)
            if state.epoch % cfg.train.checkpoint_every == 0 or last_epoch or stopped:
                ckpt.save_checkpoint(accelerator, run_dir, ckpt.checkpoint_name(state.epoch), state, meta,
                                     cfg.train.keep_last)
    finally:
        stop.restore()
    checksums = gather_object([param_checksum(unwrapped)]) if world > 1 else [param_checksum(unwrapped)]
    summary = {"kind": "final", "epoch": state.epoch, "step": state.global_step, "world_size": world,
               "stopped": stopped, "best_psnr": None if math.isinf(state.best_psnr) else state.best_psnr,
               "best_epoch": state.best_epoch, "param_checksums": checksums, "nonfinite": state.nonfinite,
               "run_dir": str(run_dir)}
    last_val = result.mean | {"count": result.count} if result is not None else None
    if last_val is None and main and not stopped:  # nothing left to train: report the run's last validation
        last_val = next(iter(read_metrics(run_dir, "val")[::-1]), None)
    if last_val is not None:
        summary.update(val_psnr=last_val["psnr"], baseline_psnr=last_val["baseline_psnr"], val_ssim=last_val["ssim"],
                       baseline_ssim=last_val["baseline_ssim"], val_count=last_val["count"])
        if main:
            print(f"final validation PSNR {last_val['psnr']:.2f} dB vs copy-last-frame baseline "
                  f"{last_val['baseline_psnr']:.2f} dB (SSIM {last_val['ssim']:.3f} vs "
                  f"{last_val['baseline_ssim']:.3f}) "
                  f"on {last_val['count']} sequences after {state.epoch} epoch(s); best {state.best_psnr:.2f} dB after "
                  f"epoch {state.best_epoch}; run dir {run_dir}")
    log.write(summary)
    accelerator.end_training()
    return summary
