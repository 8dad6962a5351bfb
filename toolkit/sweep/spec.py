"""Sweep YAMLs (the files given to `wandb sweep`): reading and checking them, the configurations they
describe, and the arguments a W&B agent passes for each.

A sweep has `method` grid/random/bayes, `parameters` with `values`/`value` or a distribution (every name a
config key, `section.key`), and a `command` that runs `... -m toolkit train RECIPE ${args}`. Locally a grid
runs every combination; random and bayes draw configurations at random (no Bayesian model without a server).
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import yaml

from toolkit.config import flat_keys, unknown_key
from toolkit.errors import ToolkitError

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
