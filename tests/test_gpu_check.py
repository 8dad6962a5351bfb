"""benchmarks/gpu_check.sh on a CPU (GPU_CHECK_DRY_RUN=1): every part walked with tiny settings, so the one GPU
run it is written for works the first time: the carried wheels install and import, a part over its limit is
killed and reported while the rest go on, no process imports wandb (the GPU machine has none), and what comes
back is the report, eval.json, the training metrics and the logs' tarball, at most 8 files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

LSTM_TEST = "test_the_lstm_dtype_under_bf16_autocast_on_the_gpu"


def probe_wheel(folder: Path) -> Path:
    """A pure-Python wheel of one module, `gpucheckprobe` (what the check's own wheels are to pip)."""
    files = {"gpucheckprobe/__init__.py": b"VALUE = 1\n",
             "gpucheckprobe-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: gpucheckprobe\nVersion: 0.1\n",
             "gpucheckprobe-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()}"
                     f",{len(data)}\n" for name, data in files.items())
    files["gpucheckprobe-0.1.dist-info/RECORD"] = (record + "gpucheckprobe-0.1.dist-info/RECORD,,\n").encode()
    folder.mkdir(parents=True)
    path = folder / "gpucheckprobe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def run_check(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """The dry run with its output in tmp_path/out and wandb made unimportable; returns (process, out)."""
    blocked = tmp_path / "blocked" / "wandb"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('wandb: not on the GPU machine')\n")
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "OUT": str(out), "GPU_CHECK_WORK": str(tmp_path / "work"),
           "GPU_CHECK_PYTHON": sys.executable, "PYTHONPATH": str(blocked.parent), "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    return proc, out


@pytest.mark.slow
def test_the_dry_run_walks_every_part_and_a_part_over_its_limit_is_killed(tmp_path):
    probe = probe_wheel(tmp_path / "wheels")
    proc, out = run_check(tmp_path, GPU_CHECK_WHEELS=str(probe.parent), GPU_CHECK_IMPORTS="gpucheckprobe",
                          **{f"GPU_CHECK_LIMIT_{LSTM_TEST}": "2"})
    report = (out / "report.txt").read_text()
    print(report)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"# wheels installed from {probe.parent}: {probe.name}" in report  # and imported: GPU_CHECK_IMPORTS
    assert re.search(r"torch \S+, CUDA \S+, cuDNN \S+, NCCL \S+", report)
    killed = re.search(rf"## {LSTM_TEST}: killed by its timeout after (\d+) s \(limit 2 s\)", report)
    assert killed and int(killed.group(1)) <= 2 + 10 + 2  # the limit, then SIGKILL's grace at most
    parts = re.findall(r"^## (\w+): ok after", report, re.M)
    assert parts == ["test_graphed_steps_train_as_eager_steps", "throughput", "train", "eval", "eval_speed",
                     "cuda_tests", "compile_test"], report
    assert "tests/test_cuda.py::test_graphed_steps_train_as_eager_steps[none] SKIPPED" in report  # node ids exist
    assert "test_nonfinite_losses_are_skipped_then_abort_keeps_the_last_checkpoint PASSED" in report
    assert "8 skipped" in report and "    2 graphs                on skipped: CUDA graphs need a CUDA device" in report
    assert re.search(r"^## data: \S+ made$", report, re.M) and "# done after" in report
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "logs.tgz", "report.txt", "train_metrics.jsonl"]
    assert json.loads((out / "eval.json").read_text())["mean"]["psnr"] > 0
    records = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "final" and records[-1]["step"] == 4
    with tarfile.open(out / "logs.tgz") as tar:
        logs = {Path(name).name for name in tar.getnames()}
    assert {"report.txt", "imports.log", "data.log", f"{LSTM_TEST}.log", "throughput.log", "train.log", "eval.log",
            "eval_speed.log", "cuda_tests.log", "compile_test.log"} <= logs


def test_a_missing_import_stops_the_check_with_one_report_line(tmp_path):
    proc, out = run_check(tmp_path, GPU_CHECK_WHEELS=str(tmp_path / "none"),
                          GPU_CHECK_IMPORTS="gpu_check_absent_module")
    report = (out / "report.txt").read_text()
    assert proc.returncode == 3, proc.stderr[-2000:]
    stop = [line for line in report.splitlines() if line.startswith("## ")]
    assert len(stop) == 1 and "stop: cannot import gpu_check_absent_module (ModuleNotFoundError" in stop[0]
    assert sorted(p.name for p in out.iterdir()) == ["logs.tgz", "report.txt"]
