"""Validation PSNR of trained checkpoints with the BatchNorm running statistics as training left them, and with
them re-estimated over training batches (what the trainer does before every validation and checkpoint).

    python benchmarks/bn_stats.py RUN_DIR [RUN_DIR ...] [--batches 20]

For each run directory, the newest periodic checkpoint is scored twice with the lab protocol on the validation
split (latents seeded by the run's seed): with its stored running statistics, and after
`toolkit.train.batchnorm.reestimate_batchnorm` over `--batches` batches. The same weights on both sides, so the
difference is the statistics alone. Meaningful for checkpoints written with train.bn_batches 0 (or by an older
trainer); the trainer's own checkpoints already hold re-estimated statistics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def score(model, manifest, cfg, acc) -> tuple[float, float, float]:
    """(mean validation PSNR, PSNR of the first predicted frame, copy-last-frame's there)."""
    from toolkit.data.loader import eval_loader
    from toolkit.eval.evaluate import evaluate
    from toolkit.eval.protocols import lab

    d = cfg.data
    loader = eval_loader(manifest, d.val_split, 20, d.n_past + d.n_future, num_workers=0)
    result, _ = evaluate(model, loader, acc, lab(d.n_past, d.n_future), seed=cfg.train.seed)
    return result.mean["psnr"], result.per_frame["psnr"][0], result.per_frame["baseline_psnr"][0]


def main() -> None:
    from accelerate import Accelerator

    from toolkit.data.shards.manifest import read_manifest
    from toolkit.sweep.stats import mean_ci95
    from toolkit.train.batchnorm import reestimate_batchnorm
    from toolkit.train.checkpoint import list_checkpoints, load_model, read_checkpoint_meta

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--batches", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    acc, gains = Accelerator(cpu=True), []
    print(f"{'run':<70} {'stored':>8} {'re-estimated':>13} {'gain':>6}  frame 3 stored -> re-estimated, copy-last")
    for run in map(Path, args.runs):
        newest = list_checkpoints(run)[-1]
        model, cfg, _ = load_model(newest)
        manifest = read_manifest(cfg.data.shards)
        before, frame_before, copy_last = score(model, manifest, cfg, acc)
        state, _ = read_checkpoint_meta(newest)
        reestimate_batchnorm(model, manifest, cfg, acc, state.epoch, args.batches)
        model.eval()
        after, frame_after, _ = score(model, manifest, cfg, acc)
        gains.append(after - before)
        print(f"{run.name[:70]:<70} {before:8.2f} {after:13.2f} {after - before:+6.2f}  "
              f"{frame_before:.2f} -> {frame_after:.2f}, {copy_last:.2f}")
    mean, half, n = mean_ci95(gains)
    print(f"\ngain from re-estimated statistics: {mean:+.2f} dB (95% CI ± {half:.2f}, n = {n} runs); "
          f"every run gained: {all(g > 0 for g in gains)}")


if __name__ == "__main__":
    main()
