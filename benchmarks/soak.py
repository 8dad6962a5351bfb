"""Long-run soak: 150 short epochs, killed with SIGKILL three times (once inside a checkpoint save) and resumed,
against the same run uninterrupted.

    python benchmarks/soak.py [--epochs 150] [--kills 3] [--seed 0] [--workdir /tmp/cvae-soak]

A tiny model (width 0.125, g 16, z 4, rnn 32) on a small embedded pushing world, 2 batches of 2 per epoch, one
loader worker, validation every 10 epochs, a checkpoint every epoch (keep_last 3), W&B offline. Reports:
- the run logs (metrics.jsonl) line for line: every step, epoch and val record (and the final record less its
  run_dir) must be identical; `perf` records hold wall-clock measurements and are left out;
- the W&B run id: one id in wandb_run_id, in the checkpoints and in every offline run directory;
- the checkpoint directory: keep_last + best at the end, and never more than keep_last + 3 entries while the
  run went on (an atomic replacement of `best` briefly holds the new copy and the old one beside them);
- the trainer's resident memory (main process) from epoch 10 to the last, uninterrupted run.
Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def prepare(work: Path, epochs: int) -> Path:
    from toolkit.data.shards.convert import convert
    from toolkit.data.worlds.synth import generate_dataset

    shards = work / "shards"
    if not (shards / "manifest.json").is_file():
        generate_dataset(work / "folders", "pushing", {"train": 32, "validate": 4, "test": 0}, progress=False)
        convert(work / "folders", shards, maxcount=8, progress=False)
    recipe = {"data": {"shards": str(shards), "batch_size": 2, "num_workers": 1, "shuffle_buffer": 8},
              "model": {"width": 0.125, "g_dim": 16, "z_dim": 4, "rnn_size": 32},
              "train": {"epochs": epochs, "epoch_size": 2, "eval_every": 10, "checkpoint_every": 1, "keep_last": 3,
                        "log_every": 1, "num_gifs": 1, "progress": False},
              "wandb": {"mode": "offline"}}
    path = work / "soak.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def start(recipe: Path, run: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "toolkit", "train", str(recipe), f"--train.run_dir={run}"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd + (["--train.resume=auto"] if resume else []), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def entries(run: Path) -> int:
    root = run / "checkpoints"
    return len(list(root.iterdir())) if root.is_dir() else 0


def watch(proc: subprocess.Popen, run: Path, kill_after: float | None, in_save: bool) -> tuple[bool, int]:
    """Poll the run until it ends or is killed: at `kill_after` seconds, or (in_save) once that time has passed
    and a checkpoint is being written. Returns (killed, most checkpoint entries seen)."""
    began, most = time.perf_counter(), 0
    while proc.poll() is None:
        most = max(most, entries(run))
        due = kill_after is not None and time.perf_counter() - began >= kill_after
        saving = (run / "checkpoints").is_dir() and any(p.name.startswith(".tmp-")
                                                         for p in (run / "checkpoints").iterdir())
        if due and (saving or not in_save):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True, most
        time.sleep(0.002)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed: {proc.stderr.read()[-3000:]}")
    return False, most


def logged(run: Path) -> list[str]:
    """The run log as comparable lines: step/epoch/val records verbatim, the final record less its run_dir."""
    lines = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "final":
            record.pop("run_dir")
            line = json.dumps(record)
        if record["kind"] != "perf":
            lines.append(line)
    return lines


def last_epoch(run: Path) -> int:
    """Epochs the run log records as completed."""
    from toolkit.train.runlog import read_metrics  # skips a line torn by the kill

    return max([r["epoch"] + 1 for r in read_metrics(run, "epoch")] or [0])


def run_ids(run: Path) -> set[str]:
    ids = {(run / "wandb_run_id").read_text().strip()}
    ids |= {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")}
    for ckpt in (run / "checkpoints").iterdir():
        ids.add(json.loads((ckpt / "train_state.json").read_text())["train_state"]["wandb_run_id"])
    return ids


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/tmp/cvae-soak")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    recipe = prepare(work, args.epochs)
    a, b = work / "uninterrupted", work / "killed"
    shutil.rmtree(a, ignore_errors=True)
    shutil.rmtree(b, ignore_errors=True)
    began = time.perf_counter()
    _, most_a = watch(start(recipe, a, False), a, None, False)
    seconds = time.perf_counter() - began
    rng, most_b, kills = random.Random(args.seed), 0, []
    for j in range(args.kills):  # the second kill waits for a checkpoint being written
        after = rng.uniform(0.1, 0.3) * seconds
        killed, most = watch(start(recipe, b, j > 0), b, after, in_save=j == 1)
        most_b = max(most_b, most)
        kills.append(f"{'in a checkpoint save ' if j == 1 else ''}after {after:.1f} s: "
                     f"{'killed' if killed else 'had already finished'} after epoch {last_epoch(b)}")
    _, most = watch(start(recipe, b, True), b, None, False)
    most_b = max(most_b, most)
    return report(args, a, b, seconds, kills, most_a, most_b)


def report(args, a: Path, b: Path, seconds: float, kills: list[str], most_a: int, most_b: int) -> int:
    left, right = logged(a), logged(b)
    same = left == right
    ids_a, ids_b = run_ids(a), run_ids(b)
    offline = len(list((b / "wandb").glob("offline-run-*")))
    keep = yaml.safe_load((a / "config.yaml").read_text())["train"]["keep_last"]
    perf = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines() if '"kind": "perf"' in line]
    rss10, rss_end = perf[9]["rss_mb"], perf[-1]["rss_mb"]
    growth = rss_end / rss10 - 1
    checks = {"logs equal": same, "one W&B run id": len(ids_b) == 1 and len(ids_a) == 1,
              "checkpoints bounded": entries(b) == keep + 1 and most_b <= keep + 3,
              "RSS growth <= 10%": growth <= 0.10}
    print(f"# {args.epochs} epochs, uninterrupted run {seconds:.0f} s; {len(kills)} SIGKILLs, seed {args.seed}")
    for k in kills:
        print(f"  kill {k}")
    first = next((i for i, (x, y) in enumerate(zip(left, right)) if x != y), min(len(left), len(right)))
    print(f"run log: {len(left)} vs {len(right)} records (step/epoch/val/final), "
          + ("identical line for line" if same else f"DIFFERENT from line {first + 1}"))
    print(f"W&B run ids: uninterrupted {sorted(ids_a)}, killed {sorted(ids_b)} across {offline} offline run "
          f"directories (one per start)")
    print(f"checkpoints: {entries(b)} entries at the end (keep_last {keep} + best), at most {most_b} seen while "
          f"training (uninterrupted {most_a}; while `best` is replaced, its new temporary directory and the old "
          f"one's holder sit beside them: keep_last + 3 at most)")
    print(f"trainer RSS: {rss10:.1f} MiB after epoch 10, {rss_end:.1f} MiB after epoch {len(perf)}: "
          f"{growth:+.1%}")
    failed = [name for name, ok in checks.items() if not ok]
    print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
