"""`cvae sweep local SWEEP.yaml`: run a W&B sweep's configurations here, one after another, without a server.

Each run gets the arguments a W&B agent would pass (`--section.key=value`, see `spec.py`), any extra overrides
given after `--`, and its own `--train.run_dir=OUT/<name>`; a run that already finished is not run again and an
interrupted one continues from its newest checkpoint. `--seeds N` runs every configuration with train.seed =
1..N, and `--part K/N` lets N runners (one per GPU, say) share one sweep. The table (`table.py`) gives the
best and final validation PSNR per configuration with a 95% confidence interval over the seeds, and the
curves are plotted with their mean and spread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from toolkit.config.load import load_config
from toolkit.errors import ConfigError, ToolkitError
from toolkit.eval.plots import plot
from toolkit.fsutil import atomic_write_text
from toolkit.launcher import launch_args
from toolkit.sweep.spec import SEED, agent_args, configurations, load_sweep, recipe_and_args, run_name
from toolkit.sweep.table import ended, results_table, runs_csv, summarize_run
from toolkit.train.runlog import read_metrics


def parse_part(part: str | None) -> tuple[int, int]:
    """`K/N` -> (K - 1, N): this runner takes runs K, K + N, ... (1-based); None -> (0, 1)."""
    if not part:
        return 0, 1
    try:
        k, n = (int(x) for x in part.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise ToolkitError(f"--part must be K/N with 1 <= K <= N, got {part!r}")
    return k - 1, n


def wanted_epochs(recipe: str, args: list[str]) -> int | None:
    """The epochs `recipe` with `args` asks for now, so that a sweep whose recipe was lengthened since continues
    its runs from their newest checkpoints; None when the arguments do not make a config (training reports it)."""
    try:
        return load_config(recipe, args).train.epochs
    except ConfigError:
        return None


def launch_processes(accelerate: list[str]) -> int:
    """Processes one run launches on this machine: `--num_processes` (else the accelerate config file's
    `num_processes`, else 1) over `--num_machines` (the launcher passes both for several nodes)."""
    value = {flag: accelerate[i + 1] for i, flag in enumerate(accelerate[:-1])
             if flag in ("--num_processes", "--num_machines", "--config_file")}
    machines = int(value.get("--num_machines", 1))
    if "--num_processes" in value:
        return max(1, int(value["--num_processes"]) // machines)
    try:
        config = yaml.safe_load(Path(value["--config_file"]).read_text()) or {}
    except (KeyError, OSError, yaml.YAMLError):
        return 1
    return int(config.get("num_processes") or 1)


def run_env(parts: int, processes: int = 1) -> dict[str, str]:
    """The environment of one run: this one, plus the threads per process when N runners share the machine.

    Every process of every runner gets cores // (N x processes) threads unless OMP_NUM_THREADS is set already,
    so that runners side by side never oversubscribe the cores: a one-process launch would leave torch one thread
    per core, and OpenMP barriers spinning against each other slow a run many times over (a 2-rank run given 2
    threads per rank on 2 cores barely advanced). (On a 2-core CPU two one-process runners of the demo-sized model
    trained about as fast with 1 thread each as with 2, 7-10 sequences/s each.)"""
    threads = str(max(1, (os.cpu_count() or 1) // (parts * processes)))
    return {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300",  # time to save on a stop, as launch.sh
            "OMP_NUM_THREADS": threads, **os.environ}


def local_sweep(path: str | Path, out: str | Path, max_runs: int | None = None, accelerate_config: str | None = None,
                extra: list[str] | None = None, seed: int = 0, seeds: int = 0, part: str | None = None) -> list[dict]:
    """Run the sweep's configurations sequentially with `accelerate launch`; write the results table + plots.

    `part` K/N runs only every N-th configuration (from the K-th), so N runners (one per GPU, say) share a
    sweep; finished runs of the others are read back, so the table covers whatever has finished."""
    sweep = load_sweep(path)
    recipe, fixed = recipe_and_args(sweep, path)
    index, parts = parse_part(part)
    if seeds < 0:
        raise ToolkitError(f"--seeds must be >= 0, got {seeds}")
    if max_runs is not None and max_runs < 1:  # 0 would otherwise read as "no limit" and start every run
        raise ToolkitError(f"--max-runs must be >= 1, got {max_runs}")
    out = Path(out)
    rows = []
    for i, config in enumerate(configurations(sweep, max_runs, seed, seeds)):
        name = run_name(config)
        run_dir = out / name
        mine = i % parts == index
        args = [*fixed, *agent_args(config), *(extra or []), f"--train.run_dir={run_dir}", "--train.resume=auto"]
        epochs = wanted_epochs(recipe, args)
        if mine and not ended(read_metrics(run_dir, "final"), epochs):
            try:
                accelerate = launch_args(accelerate_config)
            except (FileNotFoundError, KeyError, ValueError) as e:  # as launcher.main reports them
                raise ToolkitError(str(e.args[0] if e.args else e)) from None
            # --train.resume=auto: an interrupted (or lengthened) run continues from its newest checkpoint
            cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", *accelerate,
                   "-m", "toolkit", "train", recipe, *args]
            print(f"[{i + 1}] {name}", flush=True)
            env = run_env(parts, launch_processes(accelerate))
            if subprocess.run(cmd, env=env).returncode != 0:
                print(f"[{i + 1}] {name}: failed (see the output above)", flush=True)
        summary = summarize_run(run_dir, epochs)
        if not mine and summary["status"] == "failed" and not run_dir.exists():
            summary["status"] = "pending"  # another part's run, not started yet
        rows.append({"name": name, "config": config, "run_dir": str(run_dir), "mine": mine, **summary})
    params = list(sweep["parameters"]) + ([SEED] if seeds and SEED not in sweep["parameters"] else [])
    md, table = results_table(rows, params)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.md", md)
    atomic_write_text(out / "results.csv", table)
    atomic_write_text(out / "runs.csv", runs_csv(rows, params))
    finished = [r["run_dir"] for r in rows if "best_psnr" in r]
    if finished:
        plot(finished, out)
    print(md + f"wrote {out / 'results.md'}, {out / 'results.csv'} and {out / 'runs.csv'}")
    return [r for r in rows if r["mine"]]
