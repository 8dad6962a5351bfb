"""Repository contracts: the README's commands, .ci/run, launch.sh, the recipes and the layout table in
docs/development.md stay consistent."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

from conftest import REPO, tiny_recipe
from toolkit.config import load_config
from toolkit.train.runlog import read_metrics


def readme_commands() -> list[str]:
    block = re.search(r"## Set up and run\n.*?```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    main_job, tests = readme_commands()
    assert main_job.endswith("&& ./launch.sh") and tests.endswith("&& pytest -q")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    venv_prefix = "python3 -m venv .venv && . .venv/bin/activate && "
    assert tests.startswith(venv_prefix) and tests[len(venv_prefix):] in ci  # .ci/run makes the venv itself
    assert "python3 -m venv .venv" in ci and ". .venv/bin/activate" in ci
    assert os.access(REPO / ".ci" / "run", os.X_OK) and os.access(REPO / "launch.sh", os.X_OK)


def test_every_recipe_loads_and_the_demo_uses_the_embedded_data():
    recipes = sorted((REPO / "recipes" / "train").glob("*.yaml"))
    assert {p.name for p in recipes} >= {"demo.yaml", "bair_lab.yaml", "bair_svglp.yaml"}
    for path in recipes:
        load_config(path)
    demo, lab = load_config(REPO / "recipes/train/demo.yaml"), load_config(REPO / "recipes/train/bair_lab.yaml")
    assert demo.data.shards == "shards/pushing" and demo.train.resume == "auto"
    assert (lab.data.batch_size, lab.train.epochs, lab.train.epoch_size, lab.data.n_past, lab.data.n_future,
            lab.model.prior, lab.optim.lr) == (12, 300, 600, 2, 10, "fixed", 0.002)
    assert load_config(REPO / "recipes/train/bair_svglp.yaml").model.prior == "learned"


def _env() -> dict:
    return {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}


def test_launch_sh_reports_missing_files():
    proc = subprocess.run(["./launch.sh", "recipes/train/nope.yaml"], cwd=REPO, capture_output=True, text=True,
                          env=_env())
    assert proc.returncode == 2 and "recipe not found: recipes/train/nope.yaml" in proc.stderr
    proc = subprocess.run(["./launch.sh", "recipes/train/demo.yaml", "nope.yaml"], cwd=REPO, capture_output=True,
                          text=True, env=_env())
    assert proc.returncode == 2 and "accelerate config not found: nope.yaml" in proc.stderr


def test_launch_sh_trains_a_recipe_with_overrides(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", train={"epochs": 1, "epoch_size": 2})
    proc = subprocess.run(["./launch.sh", str(recipe), "recipes/accelerate/cpu.yaml", "--train.epoch_size=3"],
                          cwd=REPO, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = read_metrics(tmp_path / "run", "final")[-1]
    assert final["world_size"] == 2 and final["step"] == 3
    assert "final validation PSNR" in proc.stdout and "copy-last-frame baseline" in proc.stdout


def function_lengths() -> dict[str, int]:
    """Lines of every function in toolkit/, from `def` to its end, docstring excluded: {"path:name": lines}."""
    lengths = {}
    for path in sorted((REPO / "toolkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0]
                doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str)
                doc_lines = first.end_lineno - first.lineno + 1 if doc else 0
                lengths[f"{path.relative_to(REPO)}:{node.name}"] = node.end_lineno - node.lineno + 1 - doc_lines
    return lengths


def test_every_function_in_the_package_fits_on_a_screen():
    lengths = function_lengths()
    longest = max(lengths, key=lengths.get)
    print(f"longest function: {longest}, {lengths[longest]} lines")
    assert len(lengths) > 100 and lengths[longest] <= 60, sorted(lengths.items(), key=lambda kv: -kv[1])[:5]


def test_modules_stay_small_and_the_layout_table_lists_every_one():
    layout = (REPO / "docs" / "development.md").read_text()
    for path in sorted((REPO / "toolkit").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        assert len(path.read_text().splitlines()) <= 300, f"{rel} is longer than 300 lines"
        if path.name != "__init__.py":
            assert f"`{rel}`" in layout, f"docs/development.md's layout table does not list {rel}"


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_train_help_lists_every_config_key():
    from toolkit.config import flat_keys

    proc = subprocess.run([sys.executable, "-m", "toolkit", "train", "--help"], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0
    for key in flat_keys():
        assert f"--{key}  (" in proc.stdout, key
    assert "--model.skip_from  (str, default 'last_context', one of reference|last_context|previous)" in proc.stdout
    assert "Directory or http(s) URL holding `manifest.json`" in proc.stdout  # the docstrings come along
