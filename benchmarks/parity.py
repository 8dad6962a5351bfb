"""The toolkit against a straight port of the reference SVG training loop: equal data, steps and seeds.

    python benchmarks/parity.py [--seeds 3] [--epochs 8] [--epoch-size 100] [--out runs/parity]
    for s in 1 2 3; do python benchmarks/parity.py --only-seed $s & done; wait; python benchmarks/parity.py

Both sides train the demo's tiny model (width 0.125, g 32, z 8, rnn 64) on the embedded pushing world
(shards/pushing) with the demo recipe's hyperparameters (batch 8, lr 0.002, teacher forcing on, beta 1e-4 with
monotonic annealing), on the same batches (the training stream of the same seed, one worker), one process with
one thread each, and are scored the same way (the lab protocol on the whole validation split, one sample,
latents seeded by the training seed):
- toolkit: `python -m toolkit train recipes/train/demo.yaml` with its default model options;
- reference port: edenton/svg's architecture (decoder skips from x_{n_past-2}, no BatchNorm on the predictor
  output) trained by `toolkit.model.reference.reference_step`: edenton/svg's call pattern (train_svg_fp.py:
  every frame encoded once, then one decoder call per step, B frames each; stacked LSTM cells), NCHW, one
  Adam per module.
The port is scored twice: with the BatchNorm statistics its training left, as edenton/svg evaluates ("port"),
and with them re-estimated as the toolkit does before every validation ("port+bn"), which separates the
training code from that evaluation fix.
Printed: validation PSNR per seed and mean ± std per side, the paired differences (toolkit - port, toolkit -
port+bn) with a 95% confidence interval, how many (sequence, seed) pairs each side wins, and seconds per
training step (batch loading included) with their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "train" / "demo.yaml"


def overrides(args, seed: int) -> list[str]:
    return [f"--train.seed={seed}", f"--train.epochs={args.epochs}", f"--train.epoch_size={args.epoch_size}",
            "--data.batch_size=8", "--data.num_workers=1", f"--data.shards={args.shards}", "--schedule.tfr=1.0",
            "--optim.lr_schedule=constant"]  # the reference's rate (the demo decays it along a cosine)


def toolkit_side(args, seed: int) -> dict:
    """Train with the toolkit's own trainer in a subprocess; its final validation and s/step."""
    run = Path(args.out) / f"toolkit-seed{seed}"
    cmd = [sys.executable, "-m", "toolkit", "train", str(DEMO), *overrides(args, seed), f"--train.run_dir={run}",
           f"--train.eval_every={args.epochs}", "--train.resume=auto", "--train.progress=false",
           "--train.num_gifs=0", "--wandb.mode=disabled"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    perf = [r["seq_per_s"] for r in records if r["kind"] == "perf"]
    from toolkit.eval.report import eval_checkpoint

    report = eval_checkpoint(run / "checkpoints" / f"epoch_{args.epochs:06d}", args.shards, "validate", seed=seed,
                             batch_size=8, num_workers=1, out=run / "eval-validate.json", quiet=True)
    val = [r for r in records if r["kind"] == "val"][-1]
    assert abs(val["psnr"] - report["mean"]["psnr"]) < 1e-6  # the trainer's validation is `cvae eval`'s
    return {"psnr": report["mean"]["psnr"], "per_sequence": report["per_sequence"]["psnr"],
            "baseline": report["mean"]["baseline_psnr"], "s_per_step": sum(8 / r for r in perf) / len(perf)}


def port_side(args, seed: int) -> dict:
    """Train the port of the reference loop here, on the trainer's batches and schedules; score it alike, first
    with the BatchNorm statistics its training left (as edenton/svg), then re-estimated as the toolkit does."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from toolkit.config import load_config
    from toolkit.data.loader import eval_loader, train_loader
    from toolkit.data.shards.manifest import read_manifest
    from toolkit.eval.evaluate import evaluate
    from toolkit.eval.protocols import lab
    from toolkit.model import SVG
    from toolkit.model.reference import reference_optimizers, reference_step
    from toolkit.train.batchnorm import reestimate_batchnorm
    from toolkit.train.schedules import schedule_values, teacher_forcing_on

    torch.set_num_threads(1)
    cfg = load_config(DEMO, overrides(args, seed) + ["--model.skip_from=reference", "--model.predictor_bn=false"])
    manifest, d = read_manifest(args.shards), cfg.data
    set_seed(seed)  # as the trainer: the same initial weights where the architectures agree
    model = SVG(cfg.model, cond_dim=manifest.cond_dim, n_past=d.n_past).train()
    optimizers = reference_optimizers(model, cfg.optim.lr, (cfg.optim.beta1, cfg.optim.beta2))
    step, seconds = 0, 0.0
    for epoch in range(args.epochs):
        loader = train_loader(manifest, d.train_split, d.batch_size, args.epoch_size, d.n_past + d.n_future,
                              seed=seed, epoch=epoch, num_workers=1, shuffle_buffer=d.shuffle_buffer)
        batches = iter(loader)  # workers start before the clock, as in the trainer's epoch
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            tfr, beta = schedule_values(cfg.schedule, epoch, i, args.epoch_size, args.epochs)
            frames, cond = batch.to("cpu")
            reference_step(model, optimizers, frames, cond, beta, teacher_forcing_on(seed, step, tfr))
            step += 1
        seconds += time.perf_counter() - start
    acc = Accelerator(cpu=True)
    sides = {}
    for side in ("port", "port+bn"):  # as the reference evaluates (stored statistics), then as the toolkit does
        if side == "port+bn":
            reestimate_batchnorm(model, manifest, cfg, acc, args.epochs, cfg.train.bn_batches)
        result, _ = evaluate(model, eval_loader(manifest, d.val_split, 8, d.n_past + d.n_future, num_workers=1),
                             acc, lab(d.n_past, d.n_future), seed=seed)
        sides[side] = {"psnr": result.mean["psnr"], "per_sequence": result.per_sequence["psnr"],
                       "baseline": result.mean["baseline_psnr"], "s_per_step": seconds / step}
    return sides


def main() -> None:
    from toolkit.sweep.stats import mean_ci95, mean_std

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--epoch-size", type=int, default=100, help="steps per epoch")
    p.add_argument("--shards", default=str(REPO / "shards" / "pushing"))
    p.add_argument("--out", default=str(REPO / "runs" / "parity"))
    p.add_argument("--only-seed", type=int, help="train this seed only and keep its results (OUT/seed{N}.json), "
                   "e.g. one seed per core in parallel; a later --seeds run reuses them")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = {"toolkit": [], "port": [], "port+bn": []}
    for seed in [args.only_seed] if args.only_seed else range(1, args.seeds + 1):
        kept = Path(args.out, f"seed{seed}.json")
        if kept.exists():
            sides = json.loads(kept.read_text())
        else:
            sides = {"toolkit": toolkit_side(args, seed), **port_side(args, seed)}
            kept.write_text(json.dumps(sides))
        for side, result in sides.items():
            results[side].append(result)
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]['psnr']:.2f} dB" for k, v in results.items()), flush=True)
    if args.only_seed:
        return
    Path(args.out, "parity.json").write_text(json.dumps(results, indent=1))
    steps = args.epochs * args.epoch_size
    port = results["port"]
    print(f"\n# {args.seeds} seeds x {steps} steps (batch 8, one process, one thread), validation PSNR on "
          f"{len(port[0]['per_sequence'])} sequences; copy-last-frame {port[0]['baseline']:.2f} dB")
    print(f"{'side':<16} {'PSNR mean ± std':>16} {'per seed':>24} {'s/step':>8}")
    for side, rows in results.items():
        mean, std = mean_std([r["psnr"] for r in rows])
        per_seed = ", ".join(f"{r['psnr']:.2f}" for r in rows)
        seconds = sum(r["s_per_step"] for r in rows) / len(rows)
        print(f"{side:<16} {mean:9.2f} ± {std:4.2f} {per_seed:>24} {seconds:8.3f}")
    for other in ("port", "port+bn"):
        diff = [t["psnr"] - r["psnr"] for t, r in zip(results["toolkit"], results[other])]
        mean, half, n = mean_ci95(diff)
        wins = sum(a > b for t, r in zip(results["toolkit"], results[other])
                   for a, b in zip(t["per_sequence"], r["per_sequence"]))
        total = sum(len(t["per_sequence"]) for t in results["toolkit"])
        print(f"paired difference toolkit - {other}: {mean:+.2f} dB (95% CI ± {half:.2f}, n = {n}); the toolkit is "
              f"better on {wins} of {total} (sequence, seed) pairs")
    ratio = sum(r["s_per_step"] for r in results["toolkit"]) / sum(r["s_per_step"] for r in port)
    print(f"time per training step toolkit / port: {ratio:.2f}")


if __name__ == "__main__":
    main()
