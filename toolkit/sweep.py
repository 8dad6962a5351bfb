"""`cvae sweep local SWEEP.yaml`: run a W&B sweep's configurations here, one after another, without a server.

The sweep YAML is the one given to `wandb sweep` (method grid/random/bayes, `parameters` with `values`/`value`
or a distribution, a `command` that runs `... -m toolkit train RECIPE ${args}`). Locally, a grid runs every
combination; random and bayes draw `--max-runs` configurations at random (no Bayesian model without a server).
Each run gets the arguments a W&B agent would pass (`--section.key=value`), any extra overrides given after
`--`, and its own `--train.run_dir=OUT/<name>`; a run that already finished is not run again. The results
table (best validation PSNR per configuration, as in the reference report's Table 1) is written as Markdown
and CSV, with the runs' curves overlaid.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import random
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from toolkit.config import flat_keys, unknown_key
from toolkit.errors import ToolkitError
from toolkit.fsutil import atomic_write_text
from toolkit.plots import plot
from toolkit.stats import mean_ci95
from toolkit.tracking import read_metrics

MACROS = ("${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}", "${args_json}",
          "${args_json_file}", "${args_no_boolean_flags}")


def load_sweep(path: str | Path) -> dict:
    """Read a sweep YAML and check it: method, parameters (real config keys), a `train RECIPE` command."""
    path = Path(path)
    try:
        sweep = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ToolkitError(f"{path}: cannot read the sweep ({e})") from None
    if not isinstance(sweep, dict) or sweep.get("method") not in ("grid", "random", "bayes"):
        raise ToolkitError(f"{path}: 'method' must be grid, random or bayes")
    params = sweep.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ToolkitError(f"{path}: 'parameters' must be a non-empty mapping")
    known = flat_keys()
    for key, spec in params.items():
        if key not in known:
            raise unknown_key(key, known, f"{path}: parameters")
        if not isinstance(spec, dict) or not ({"values", "value", "distribution"} & set(spec)):
            raise ToolkitError(f"{path}: parameter '{key}' needs values, value or a distribution")
        if sweep["method"] == "grid" and "values" not in spec and "value" not in spec:
            raise ToolkitError(f"{path}: grid sweeps need 'values' for '{key}'")
    recipe_and_args(sweep, path)
    return sweep


def recipe_and_args(sweep: dict, where: str | Path) -> tuple[str, list[str]]:
    """The recipe after `train` in the sweep's command, and the fixed arguments after it (macros dropped)."""
    command = [str(c) for c in sweep.get("command", [])]
    if "train" not in command or command.index("train") + 1 >= len(command):
        raise ToolkitError(f"{where}: the command must run `-m toolkit train RECIPE ${{args}}`")
    i = command.index("train")
    return command[i + 1], [c for c in command[i + 2:] if c not in MACROS]


def _draw(spec: dict, rng: random.Random):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    kind, lo, hi = spec["distribution"], spec.get("min"), spec.get("max")
    if kind == "uniform":
        return rng.uniform(lo, hi)
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if kind == "int_uniform":
        return rng.randint(lo, hi)
    if kind == "categorical":
        return rng.choice(spec["values"])
    raise ToolkitError(f"distribution '{kind}' is not supported locally (use uniform, log_uniform_values, int_uniform)")


SEED = "train.seed"


def configurations(sweep: dict, max_runs: int | None = None, seed: int = 0, seeds: int = 0) -> list[dict]:
    """Grid: every combination (up to max_runs); random/bayes: max_runs (default 10) random draws. With `seeds`
    = N > 0, every configuration runs with train.seed = 1..N (replacing a train.seed parameter)."""
    params = {k: v for k, v in sweep["parameters"].items() if not (seeds and k == SEED)}
    if sweep["method"] == "grid":
        axes = [[(k, v) for v in spec.get("values", [spec.get("value")])] for k, spec in params.items()]
        combos = [dict(c) for c in itertools.product(*axes)]
        combos = combos[:max_runs] if max_runs else combos
    else:
        rng = random.Random(seed)
        combos = [{k: _draw(spec, rng) for k, spec in params.items()} for _ in range(max_runs or 10)]
    return [{**c, SEED: s} for c in combos for s in range(1, seeds + 1)] if seeds else combos


def agent_args(config: dict) -> list[str]:
    """What a W&B agent substitutes for ${args}: `--key=value` per parameter."""
    return [f"--{k}={v}" for k, v in config.items()]


def run_name(config: dict) -> str:
    parts = [f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
             for k, v in config.items()]
    return ",".join(parts).replace("/", "_")


def _ended(final: list[dict]) -> bool:
    """Whether a run's final records say it ran to its end (not stopped by a signal)."""
    return bool(final) and not final[-1]["stopped"]


def summarize_run(run_dir: Path) -> dict:
    val = read_metrics(run_dir, "val")
    final = read_metrics(run_dir, "final")
    if not val:
        return {"status": "failed" if not final else "no validation"}
    best = max(val, key=lambda r: r["psnr"])
    return {"status": "done" if _ended(final) else "incomplete",
            "best_psnr": best["psnr"], "best_epoch": best["epoch"] + 1, "final_psnr": val[-1]["psnr"],
            "final_ssim": val[-1]["ssim"], "baseline_psnr": val[-1]["baseline_psnr"], "epochs": val[-1]["epoch"] + 1}


def _group(rows: list[dict], params: list[str]) -> list[tuple[dict, list[dict]]]:
    """Runs grouped by configuration (every parameter but train.seed), in first-seen order."""
    groups: dict[tuple, tuple[dict, list[dict]]] = {}
    for r in rows:
        config = {p: r["config"][p] for p in params if p != SEED}
        groups.setdefault(tuple(map(str, config.values())), (config, []))[1].append(r)
    return list(groups.values())


def _ci_cell(stats: tuple[float, float, int], digits: int) -> str:
    mean, half, n = stats
    if n == 0:
        return ""
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if n > 1 else "")


COLUMNS = [("best_psnr", "best val PSNR", 2), ("final_psnr", "final val PSNR", 2), ("final_ssim", "final SSIM", 3),
           ("baseline_psnr", "copy-last PSNR", 2)]


def results_table(rows: list[dict], params: list[str]) -> tuple[str, str]:
    """(Markdown, CSV) with one row per configuration: mean ± 95% CI (Student t over the finished seeds) of the
    best and final validation PSNR and the final SSIM, the copy-last baseline, n finished runs and the status."""
    names = [p for p in params if p != SEED]
    md = ["| " + " | ".join([p.split(".")[-1] for p in names] + [t for _, t, _ in COLUMNS] + ["n", "status"]) + " |",
          "|" + "---|" * (len(names) + len(COLUMNS) + 2)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(names + [f"{c}_{x}" for c, _, _ in COLUMNS for x in ("mean", "ci95")] + ["n", "runs", "status"])
    for config, runs in _group(rows, params):
        done = [r for r in runs if r["status"] == "done"]
        stats = {c: mean_ci95([r[c] for r in done]) for c, _, _ in COLUMNS}
        status = "done" if len(done) == len(runs) else ", ".join(sorted({r["status"] for r in runs} - {"done"}))
        md.append("| " + " | ".join([str(config[p]) for p in names] + [_ci_cell(stats[c], d) for c, _, d in COLUMNS]
                                    + [str(len(done)), status]) + " |")
        writer.writerow([config[p] for p in names] + [v for c, _, _ in COLUMNS for v in stats[c][:2]]
                        + [len(done), " ".join(r["name"] for r in runs), status])
    return "\n".join(md) + "\n", buf.getvalue()


def runs_csv(rows: list[dict], params: list[str]) -> str:
    """One row per run: its parameters and results."""
    cols = ["best_psnr", "best_epoch", "final_psnr", "final_ssim", "baseline_psnr", "status"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run"] + params + cols)
    for r in rows:
        writer.writerow([r["name"]] + [r["config"].get(p, "") for p in params] + [r.get(c, "") for c in cols])
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    accel = accelerate_config or ("recipes/accelerate/gpu1_bf16.yaml" if torch.cuda.is_available()
                                  else "recipes/accelerate/cpu.yaml")
    out = Path(out)
    rows = []
    for i, config in enumerate(configurations(sweep, max_runs, seed, seeds)):
        name = run_name(config)
        run_dir = out / name
        mine = i % parts == index
        if mine and not _ended(read_metrics(run_dir, "final")):
            cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", accel,
                   "--main_process_port", str(_free_port()), "-m", "toolkit", "train", recipe, *fixed,
                   *agent_args(config), *(extra or []), f"--train.run_dir={run_dir}",
                   "--train.resume=auto"]  # an interrupted sweep continues its unfinished run
            print(f"[{i + 1}] {name}", flush=True)
            if subprocess.run(cmd).returncode != 0:
                print(f"[{i + 1}] {name}: failed (see the output above)", flush=True)
        summary = summarize_run(run_dir)
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
