"""recipes/slurm/train.sbatch for real on localhost: 2 "nodes" of one gloo rank each, and the time-limit path
(SIGUSR1 -> checkpoint -> scontrol requeue -> the next run resumes). SLURM itself is stood in for by a fake
`srun` (one copy of its command per node, with SLURM_NODEID/SLURM_PROCID set, forwarding SIGTERM/SIGINT to them,
as srun does) and a fake `scontrol` that records its arguments and expands a comma-separated node list."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_recipe
from toolkit.launcher import free_port
from toolkit.train.checkpoint import list_checkpoints
from toolkit.train.runlog import read_metrics

SBATCH = REPO / "recipes" / "slurm" / "train.sbatch"
JOB_ID = "4242"

FAKE_SRUN = """#!{python}
import os, signal, subprocess, sys
args = sys.argv[1:]
options = []
while args and args[0].startswith("-"):
    options.append(args.pop(0))
with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
    log.write("srun " + " ".join(options) + "\\n")
nodes = int(os.environ["SLURM_JOB_NUM_NODES"])
tasks = [subprocess.Popen(args, env={{**os.environ, "SLURM_NODEID": str(i), "SLURM_PROCID": str(i),
                                     "SLURM_LOCALID": "0", "SLURM_STEP_ID": "0"}}) for i in range(nodes)]
forward = lambda sig, frame: [t.send_signal(sig) for t in tasks]
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
codes = [t.wait() for t in tasks]
sys.exit(max(c if c >= 0 else 128 - c for c in codes))
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_SLURM_LOG"
if [ "$1 $2" = "show hostnames" ]; then tr ',' '\\n' <<<"$3"; fi
"""


def slurm_env(tmp_path: Path, nodes: int, **extra: str) -> dict:
    """The variables SLURM sets in a batch job, fake srun/scontrol first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN.format(python=sys.executable)), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
            "FAKE_SLURM_LOG": str(tmp_path / "slurm.log"), "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NUM_NODES": str(nodes),
            "SLURM_NNODES": str(nodes), "SLURM_JOB_NODELIST": ",".join(["127.0.0.1"] * nodes),
            "SLURM_SUBMIT_DIR": str(REPO), "MASTER_PORT": str(free_port()), "GPUS_PER_NODE": "1",
            "OMP_NUM_THREADS": "1",  # all "nodes" share this machine: one thread each (see test_scale's 2-node test)
            **extra}


def sbatch(recipe: Path, env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SBATCH), str(recipe), "recipes/accelerate/cpu.yaml"], cwd="/", env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def log_lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "slurm.log").read_text().splitlines()


@pytest.mark.slow
def test_two_nodes_train_with_rank_and_address_from_slurm(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run", train={"epochs": 1, "epoch_size": 3})
    proc = sbatch(recipe, slurm_env(tmp_path, nodes=2))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    final = read_metrics(tmp_path / "run", "final")[-1]
    assert final["world_size"] == 2 and final["step"] == 3 and not final["stopped"]
    assert len(final["param_checksums"]) == 2 and final["param_checksums"][0] == final["param_checksums"][1]
    assert log_lines(tmp_path) == ["scontrol show hostnames 127.0.0.1,127.0.0.1", "srun --nodes=2 --ntasks-per-node=1"]
    assert "2 node(s), MASTER_ADDR=127.0.0.1" in out and "--train.resume=auto" in out
    assert "resume: auto" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.slow
def test_sigusr1_saves_a_checkpoint_requeues_and_the_next_run_resumes(tmp_path, pushing_shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", pushing_shards, tmp_path / "run",
                         train={"epochs": 1, "epoch_size": 40, "eval_every": 1})
    env = slurm_env(tmp_path, nodes=2)
    proc = sbatch(recipe, env)
    deadline = time.time() + 300
    while len(read_metrics(tmp_path / "run", "step")) < 3:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no training steps"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@... does: to the batch script alone
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGUSR1: checkpointing and stopping the trainers, then requeueing" in err
    assert log_lines(tmp_path)[-1] == f"scontrol requeue {JOB_ID}"
    saved = list_checkpoints(tmp_path / "run")
    assert len(saved) == 1 and "_step_" in saved[0].name
    stopped = read_metrics(tmp_path / "run", "final")[-1]
    assert stopped["stopped"] and stopped["world_size"] == 2 and 3 <= stopped["step"] < 40
    # SLURM runs the requeued job's script again from the top
    again = sbatch(recipe, {**env, "SLURM_RESTART_COUNT": "1", "MASTER_PORT": str(free_port())})
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "restart 1" in out and "resuming from" in out and saved[0].name in out
    final = read_metrics(tmp_path / "run", "final")[-1]
    assert not final["stopped"] and final["step"] == 40 and final["param_checksums"][0] == final["param_checksums"][1]
    assert [r["step"] for r in read_metrics(tmp_path / "run", "step")] == list(range(1, 41))  # no step lost or redone
    assert [line for line in log_lines(tmp_path) if "requeue" in line] == [f"scontrol requeue {JOB_ID}"]
