"""Speed and memory of `cvae eval` under a protocol: videos/s, generated frames/s and peak memory.

    python benchmarks/eval_speed.py CHECKPOINT --shards shards/pushing [--protocol svg] [--videos 100]
        [--processes 1,2] [--batch-size 16] [--rounds 1] [--keep REPORT.json]

Runs the real command (`python -m toolkit eval`, or `accelerate launch` with N CPU processes or GPUs) on the
first --videos test videos, as a user would, and reads the evaluation's own wall time from its report (model
loading and process start-up excluded; printed separately as the command's wall time). Peak memory is the
largest resident set of the command's processes (getrusage of the waited-for children) on a CPU, and
torch.cuda.max_memory_allocated on a GPU (printed by the report's device run). LPIPS and FVD are left out when
their weight files are absent (`cvae weights list`), and the table says so. Medians over --rounds.
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

REPO = Path(__file__).resolve().parents[1]


def absent_weights(protocol: str) -> list[str]:
    """The protocol's metrics whose weight files are missing here (left out with --skip)."""
    sys.path.insert(0, str(REPO))
    from toolkit.eval import weights
    from toolkit.eval.perceptual import BACKBONES
    from toolkit.eval.protocols import PROTOCOLS

    p, skip = PROTOCOLS[protocol], []
    if "lpips" in p.metrics and not weights.resolve(BACKBONES[p.lpips_net][0]).is_file():
        skip.append("lpips")
    if p.fvd is not None and not weights.resolve("i3d").is_file():
        skip.append("fvd")
    return skip


def command(args, processes: int, out: Path, skip: list[str]) -> list[str]:
    tail = ["-m", "toolkit", "eval", args.checkpoint, "--shards", args.shards, "--split", args.split, "--protocol",
            args.protocol, "--limit", str(args.videos), "--batch-size", str(args.batch_size), "--json", str(out)]
    tail += ["--skip", ",".join(skip)] if skip else []
    if processes == 1:
        return [sys.executable, *tail]
    config = REPO / "recipes" / "accelerate" / "cpu.yaml"
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(config),
            "--num_processes", str(processes), *tail]


PEAK = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")
"""Runs the command and prints the largest resident set (KiB) of its processes: a fresh count per run."""


def run_once(args, processes: int, skip: list[str]) -> dict:
    """One evaluation in fresh processes: its report's seconds, the command's wall time and peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PEAK, *command(args, processes, out, skip)], cwd=REPO, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"cvae eval failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-2:]}")
        report = json.loads(out.read_text())
        if args.keep:
            Path(args.keep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(out, args.keep)
    peak_mib = int(proc.stderr.strip().splitlines()[-1]) / 1024  # KiB on Linux
    return {"seconds": report["seconds"], "wall": wall, "peak_mib": peak_mib, "count": report["count"],
            "samples": report["samples"], "frames": report["n_future"], "psnr": report["mean"]["psnr"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--shards", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--protocol", default="svg")
    p.add_argument("--videos", type=int, default=100)
    p.add_argument("--processes", default="1", help="comma-separated process counts (CPU: 1 thread per core each)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--keep", help="copy the last run's report here (the figures behind the table)")
    args = p.parse_args()
    skip = absent_weights(args.protocol)
    print(f"# protocol {args.protocol}, {args.videos} videos of {args.split}, batch {args.batch_size}; "
          + (f"left out (weights absent): {', '.join(skip)}" if skip else "all metrics"))
    print("processes  videos  samples x frames  eval s  videos/s  frames/s  command s  peak MiB  best PSNR")
    for processes in [int(n) for n in args.processes.split(",")]:
        runs = [run_once(args, processes, skip) for _ in range(args.rounds)]
        r, sec = runs[0], statistics.median(x["seconds"] for x in runs)
        frames = r["count"] * r["samples"] * r["frames"]
        print(f"{processes:9d} {r['count']:7d} {r['samples']:8d} x {r['frames']:<5d} {sec:8.1f} {r['count'] / sec:9.2f}"
              f" {frames / sec:9.0f} {statistics.median(x['wall'] for x in runs):10.1f} "
              f"{max(x['peak_mib'] for x in runs):9.0f} {r['psnr']:10.3f}")


if __name__ == "__main__":
    main()
