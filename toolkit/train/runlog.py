"""The run log, RUN_DIR/metrics.jsonl: one JSON record per line, written by the main process, read by plots,
sweeps and tests without W&B.

Record kinds: `step` (every train.log_every optimizer steps), `epoch` (per epoch), `val` (per validation),
`perf` (per epoch: sequences/s and the main process's resident memory, the only measurements) and `final`
(per training that ends or stops). Given the seed and the world size, every record but `perf` (and the
`run_dir` of `final`) is reproducible exactly. A resumed run first drops what a killed run logged after its
checkpoint, so the log of an interrupted and resumed run equals an uninterrupted run's, record for record.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.fsutil import atomic_write_text

METRICS = "metrics.jsonl"


class RunLog:
    """Append-only JSON-lines log of step/epoch/val records, written by the main process only."""

    def __init__(self, run_dir: str | Path, enabled: bool):
        self.path = Path(run_dir) / METRICS
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()

    def truncate(self, global_step: int, validation_due: bool = False) -> None:
        """Drop the records a stopped or killed run logged after its checkpoint at `global_step` (the resumed run
        logs them again): everything after that step, its `final` records (the resumed run writes its own) and,
        when the checkpoint still owes its epoch's validation, a `val` record at that step; `global_step` 0
        clears the log."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path.parent) if global_step > 0 and r.get("step", 0) <= global_step
                and r.get("kind") != "final"
                and not (validation_due and r.get("kind") == "val" and r.get("step") == global_step)]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """Records of a run's metrics.jsonl (optionally of one kind: step, epoch, val, final); a torn last line
    (the writer was killed mid-write) is ignored."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records
