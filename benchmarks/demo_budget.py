"""Where the demo's time goes: `./launch.sh` run end to end, its wall time split into parts, beside the
compute-only step at the demo's batch and thread count.

    python benchmarks/demo_budget.py                            # the demo as ./launch.sh runs it
    python benchmarks/demo_budget.py --rev 4e72252 --rev HEAD   # side by side, alternating, on one machine
    python benchmarks/demo_budget.py --epochs 1 --epoch-size 60 --rounds 2 --compute-only

Each run trains the demo recipe into a fresh temporary run dir on the existing shards/pushing (generate it once
with `./launch.sh` or `cvae synth` + `cvae shards convert`; data generation is timed apart by `--synth`). A
`--rev` other than the work tree runs from a git worktree of that commit. The parts:

- start-up: from the command's start to the trainer's "N parameters, ..." line (interpreter and torch imports,
  accelerate's launcher, process group, W&B, data checks, model build);
- training: the epochs' `train_s` from metrics.jsonl minus the waits for data (`data_s`): forward, backward,
  all-reduce and Adam, as rank 0 saw them;
- waiting for data, BatchNorm re-estimation, validation (prediction, scoring, GIFs), checkpoints: the `perf`
  records' `data_s`, `bn_s`, `val_s`, `ckpt_s`;
- finish: from the last epoch to the end of the command (the final record, W&B's finish, process exit), the
  rest of the wall time. Commits before the perf record had its parts (4e72252) log only sequences/s: their
  training includes the waits for data, and their finish the BatchNorm re-estimation, validation and
  checkpoints.

`--compute-only` adds the trainer's step alone (a fixed batch, no loader, no DDP, one process, one thread, the
demo's model and batch, glibc's allocator set as `cvae` sets it; `benchmarks/throughput.py`'s `trainer_step`): the
demo's per-step training time over it is what the demo pays beyond compute. Runs alternate between revisions within
each round; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PARTS = ("start-up", "training", "waiting for data", "BatchNorm re-estimation", "validation", "checkpoints",
         "finish")


def checkout(rev: str, work: Path) -> Path:
    """The tree to run: the work tree itself for `.`, else a detached worktree of `rev` sharing the shards."""
    if rev == ".":
        return REPO
    tree = work / f"tree-{rev}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        (tree / "shards").mkdir(exist_ok=True)
        target = tree / "shards" / "pushing"
        if not target.exists():
            target.symlink_to(REPO / "shards" / "pushing")
    return tree


def run_demo(tree: Path, run_dir: Path, accelerate_config: list[str], extra: list[str]) -> dict[str, float]:
    """Run ./launch.sh in `tree` into `run_dir`; seconds per part (PARTS) and the number of training steps."""
    cmd = ["./launch.sh", "recipes/train/demo.yaml", *accelerate_config, f"--train.run_dir={run_dir}",
           "--train.progress=false", *extra]
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    started, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if started is None and " parameters, " in line:
            started = time.perf_counter() - start
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(cmd)} in {tree} failed:\n{''.join(lines[-30:])}")
    wall = time.perf_counter() - start
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    perf = [r for r in records if r["kind"] == "perf"]
    steps = perf[-1]["step"] if perf else 0
    if perf and "train_s" not in perf[0]:  # older commits log only sequences/s: training and data together
        world = next(r["world_size"] for r in records if r["kind"] == "final")
        batch = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["batch_size"]
        done = [0] + [p["step"] for p in perf]
        train = sum((b - a) * batch * world / p["seq_per_s"] for a, b, p in zip(done, done[1:], perf))
        parts = {"start-up": started or 0.0, "training": train}
        return {**parts, "finish": wall - sum(parts.values()), "wall": wall, "steps": steps}
    total = {k: sum(p.get(k, 0.0) for p in perf) for k in ("train_s", "data_s", "bn_s", "val_s", "ckpt_s")}
    parts = [started or 0.0, total["train_s"] - total["data_s"], total["data_s"], total["bn_s"], total["val_s"],
             total["ckpt_s"]]
    parts.append(wall - sum(parts))
    return {**dict(zip(PARTS, parts)), "wall": wall, "steps": steps}


def compute_only_step(batch: int, rounds: int) -> float:
    """Median seconds of the trainer's teacher-forced step alone: demo model and batch, one thread."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from throughput import make_model, timed_rounds, trainer_step

    from toolkit.allocator import keep_freed_memory

    keep_freed_memory()  # as the trainer's processes
    torch.set_num_threads(1)
    step = trainer_step(make_model("tiny", channels_last=True), batch, True)
    return timed_rounds({"step": step}, rounds, steps=10, warmup=3)["step"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", action="append", help="commit to run (repeatable; default: the work tree)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--epochs", type=int, help="override train.epochs (default: the recipe's)")
    p.add_argument("--epoch-size", type=int, help="override train.epoch_size (default: the recipe's)")
    p.add_argument("--compute-only", action="store_true", help="also time the trainer's step alone")
    p.add_argument("--synth", action="store_true", help="also time generating the pushing world's shards")
    p.add_argument("--accelerate-config", help="launch.sh's ACCEL_CONFIG (default: its own choice)")
    p.add_argument("overrides", nargs="*", help="recipe overrides for every run, e.g. --wandb.mode=disabled "
                                                "(after --)")
    args = p.parse_args()
    if not (REPO / "shards" / "pushing" / "manifest.json").is_file():
        sys.exit("error: shards/pushing/manifest.json not found: run ./launch.sh once (it generates the shards)")
    extra = ([f"--train.epochs={args.epochs}"] if args.epochs else []) + \
            ([f"--train.epoch_size={args.epoch_size}"] if args.epoch_size else []) + args.overrides
    accelerate_config = [args.accelerate_config] if args.accelerate_config else []
    revs = args.rev or ["."]
    work = Path(tempfile.mkdtemp(prefix="cvae-demo-budget-"))
    results: dict[str, list[dict]] = {rev: [] for rev in revs}
    try:
        trees = {rev: checkout(rev, work) for rev in revs}
        synth = time_synth(work) if args.synth else None
        for r in range(args.rounds):
            for rev in revs if r % 2 == 0 else revs[::-1]:
                results[rev].append(run_demo(trees[rev], work / f"run-{rev}-{r}", accelerate_config, extra))
                print(f"# round {r + 1}, {rev}: {results[rev][-1]['wall']:.1f} s", flush=True)
        compute = compute_only_step(8, 5) if args.compute_only else None
    finally:
        for rev in revs:
            if rev != ".":
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / f"tree-{rev}")],
                               check=False)
        shutil.rmtree(work, ignore_errors=True)
    report(results, synth, compute)


def time_synth(work: Path) -> float:
    """Seconds to generate the demo's data as launch.sh does on first use (1000/100/100 sequences, shards, a
    process per core up to 8)."""
    from toolkit.launcher import data_workers

    workers = str(data_workers())
    start = time.perf_counter()
    for cmd in (["cvae", "synth", "--world", "pushing", "--out", str(work / "folders"), "--train", "1000",
                 "--validate", "100", "--test", "100", "--workers", workers],
                ["cvae", "shards", "convert", str(work / "folders"), str(work / "shards"), "--maxcount", "64",
                 "--workers", workers]):
        subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def report(results: dict[str, list[dict]], synth: float | None, compute: float | None) -> None:
    revs = list(results)
    print(f"\n| part | {' | '.join(f'{rev} (s)' for rev in revs)} |")
    print("|---|" + "---|" * len(revs))
    if synth is not None:
        print(f"| data generation (first use) | {synth:.1f} |" + " |" * (len(revs) - 1))
    for part in (*PARTS, "wall"):
        cells = [f"{statistics.median(r[part] for r in results[rev]):.1f}" if part in results[rev][0] else "-"
                 for rev in revs]
        print(f"| {part} | {' | '.join(cells)} |")
    for rev in revs:
        steps = results[rev][0]["steps"]
        per_step = statistics.median(r["training"] for r in results[rev]) / max(steps, 1)
        line = f"{rev}: {steps} steps, training {per_step:.3f} s/step"
        if compute:
            line += f" = {per_step / compute:.2f}x the compute-only step ({compute:.3f} s, batch 8, 1 thread)"
        print(line)


if __name__ == "__main__":
    main()
