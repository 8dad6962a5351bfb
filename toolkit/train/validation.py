"""Validation during training: the whole validation split scored with `train.val_protocol` (`eval.protocols`), in
the precision `cvae eval` uses (float32 unless train.eval_precision says otherwise), so the best checkpoint is
chosen on the numbers `cvae eval` reports; prediction GIFs; the best checkpoint kept.
"""

from __future__ import annotations

from toolkit.data.loader import eval_loader
from toolkit.eval.evaluate import broadcast_buffers, evaluate
from toolkit.eval.video import compose, save_gif, with_context
from toolkit.train import checkpoint as ckpt
from toolkit.train.setup import Run


def validate(run: Run) -> None:
    """Score the epoch just completed (state.epoch - 1): a `val` record, W&B values and GIFs, the best
    checkpoint when it improved; clears state.validation_due."""
    cfg, acc, state = run.cfg, run.accelerator, run.state
    d, epoch = cfg.data, state.epoch - 1
    protocol = run.val_protocol
    loader = eval_loader(run.manifest, d.val_split, d.batch_size, protocol.n_past + protocol.n_future,
                         rank=acc.process_index, world_size=acc.num_processes, num_workers=d.num_workers,
                         limit=d.val_sequences, use_cond=d.use_cond)
    broadcast_buffers(run.unwrapped, acc)
    keep = cfg.train.num_gifs if acc.is_main_process else 0
    lpips, fvd = run.val_scorers
    result, kept = evaluate(run.unwrapped, loader, acc, protocol, seed=cfg.train.seed, keep=keep,
                            precision=cfg.train.eval_precision, lpips=lpips, fvd=fvd)
    run.log.write({"kind": "val", "epoch": epoch, "step": state.global_step, "count": result.count,
                   "protocol": protocol.name, "n_past": d.n_past, **result.mean, **result.fvd,
                   **{k: result.latent[k] for k in ("kl", "active_units", "kl_per_step", "kl_per_dim")
                      if k in result.latent}, "samples": protocol.samples,
                   "psnr_per_frame": result.per_frame["psnr"],
                   "ssim_per_frame": result.per_frame["ssim"],
                   "baseline_psnr_per_frame": result.per_frame["baseline_psnr"]})
    values = {f"val/{k}": v for k, v in result.mean.items()}
    values.update({f"val/{k}": result.latent[k] for k in ("kl", "active_units") if k in result.latent})
    values.update({f"val/psnr_frame_{d.n_past + 1 + t:02d}": v  # 1-based frame numbers, as `cvae eval` prints
                   for t, v in enumerate(result.per_frame["psnr"])})
    if kept:
        rows = [[gt, with_context(gt[:d.n_past], pred)] for _, gt, pred in kept]
        gif = save_gif(run.run_dir / "samples" / f"epoch_{epoch + 1:06d}.gif", compose(rows, d.n_past))
        if cfg.wandb.log_videos and acc.trackers:
            import wandb
            values["val/prediction"] = wandb.Video(str(gif), format="gif")
    acc.log(values, step=state.global_step)
    run.last_val = result.mean | {"count": result.count}
    state.validation_due = False
    if result.mean["psnr"] > state.best_psnr:
        state.best_psnr, state.best_epoch = result.mean["psnr"], state.epoch
        ckpt.save_checkpoint(acc, run.run_dir, ckpt.BEST, state, run.meta)
