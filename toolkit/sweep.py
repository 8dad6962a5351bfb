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


def configurations(sweep: dict, max_runs: int | None = None, seed: int = 0) -> list[dict]:
    """Grid: every combination (up to max_runs); random/bayes: max_runs (default 10) random draws."""
    params = sweep["parameters"]
    if sweep["method"] == "grid":
        axes = [[(k, v) for v in spec.get("values", [spec.get("value")])] for k, spec in params.items()]
        combos = [dict(c) for c in itertools.product(*axes)]
        return combos[:max_runs] if max_runs else combos
    rng = random.Random(seed)
    return [{k: _draw(spec, rng) for k, spec in params.items()} for _ in range(max_runs or 10)]


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


def _cell(value, column: str) -> str:
    """A Markdown cell: PSNR in dB to 2 decimals, SSIM to 3."""
    if isinstance(value, float) and not math.isnan(value):
        return f"{value:.3f}" if column.endswith("ssim") else f"{value:.2f}"
    return "" if value is None else str(value)


def results_table(rows: list[dict], params: list[str]) -> tuple[str, str]:
    """(Markdown, CSV) of the per-configuration results, best validation PSNR first column after params."""
    cols = ["best_psnr", "best_epoch", "final_psnr", "final_ssim", "baseline_psnr", "status"]
    names = [p.split(".")[-1] for p in params]
    md = ["| " + " | ".join(names + ["best val PSNR", "at epoch", "final val PSNR", "final SSIM", "copy-last PSNR",
                                     "status"]) + " |", "|" + "---|" * (len(names) + len(cols))]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run"] + params + cols)
    for r in rows:
        md.append("| " + " | ".join([str(r["config"][p]) for p in params] + [_cell(r.get(c), c) for c in cols]) + " |")
        writer.writerow([r["name"]] + [r["config"][p] for p in params] + [r.get(c, "") for c in cols])
    return "\n".join(md) + "\n", buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_sweep(path: str | Path, out: str | Path, max_runs: int | None = None, accelerate_config: str | None = None,
                extra: list[str] | None = None, seed: int = 0) -> list[dict]:
    """Run the sweep's configurations sequentially with `accelerate launch`; write the results table + plots."""
    sweep = load_sweep(path)
    recipe, fixed = recipe_and_args(sweep, path)
    accel = accelerate_config or ("recipes/accelerate/gpu1_bf16.yaml" if torch.cuda.is_available()
                                  else "recipes/accelerate/cpu.yaml")
    out = Path(out)
    rows = []
    for config in configurations(sweep, max_runs, seed):
        name = run_name(config)
        run_dir = out / name
        if not _ended(read_metrics(run_dir, "final")):
            cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", accel,
                   "--main_process_port", str(_free_port()), "-m", "toolkit", "train", recipe, *fixed,
                   *agent_args(config), *(extra or []), f"--train.run_dir={run_dir}",
                   "--train.resume=auto"]  # an interrupted sweep continues its unfinished run
            print(f"[{len(rows) + 1}] {name}", flush=True)
            if subprocess.run(cmd).returncode != 0:
                print(f"[{len(rows) + 1}] {name}: failed (see the output above)", flush=True)
        rows.append({"name": name, "config": config, "run_dir": str(run_dir), **summarize_run(run_dir)})
    md, table = results_table(rows, list(sweep["parameters"]))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.md", md)
    atomic_write_text(out / "results.csv", table)
    finished = [r["run_dir"] for r in rows if "best_psnr" in r]
    if finished:
        plot(finished, out)
    print(md + f"wrote {out / 'results.md'} and {out / 'results.csv'}")
    return rows
