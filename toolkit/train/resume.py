"""Which checkpoint a training continues from, and what the continuation can no longer promise.

`--train.resume=auto` takes the newest periodic checkpoint that passes `checkpoint.verify` (every file has
its recorded size and sha256), naming each newer one it skips; a path takes that checkpoint or stops with one
line. A checkpoint is exact to resume on the world size it was saved with: on another, the data order and the
noise differ from an uninterrupted run, and ranks without a saved RNG state start from the seed instead.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.train.checkpoint import list_checkpoints, read_checkpoint_meta, verify


def resume_target(resume: str, run_dir: Path) -> tuple[Path | None, list[str]]:
    """(checkpoint to resume from or None for a fresh run, warnings about skipped checkpoints).

    Refuses to start afresh over a run that has checkpoints, and to resume from a corrupt explicit path.
    """
    existing = list_checkpoints(run_dir)
    if resume == "auto":
        skipped = []
        for path in reversed(existing):
            problem = verify(path)
            if problem is None:
                return path, skipped
            skipped.append(f"skipping checkpoint {path.name}: {problem}")
        if existing:
            raise ToolkitError(f"{run_dir}: no usable checkpoint to resume from ({'; '.join(skipped)})")
        return None, []
    if resume:
        problem = verify(resume)
        if problem is not None:
            raise ToolkitError(f"cannot resume from {resume}: {problem}")
        return Path(resume), []
    if existing:
        raise ToolkitError(f"{run_dir} already holds checkpoints (newest: {existing[-1].name}); pass "
                           "--train.resume=auto to continue that run, or choose another --train.run_dir")
    return None, []


# Config keys that change what a continued run computes (the rest: paths, logging, checkpoint cadence, W&B;
# the precision is compared as the checkpoint recorded it, below, since train.mixed_precision may say "auto").
EXACT_SECTIONS = ("data", "model", "optim", "schedule")
EXACT_TRAIN_KEYS = ("seed", "epochs", "epoch_size", "bn_batches", "channels_last")


def changed_keys(saved: dict, current: dict) -> list[str]:
    """`section.key` of every setting in EXACT_SECTIONS / EXACT_TRAIN_KEYS that differs between two configs."""
    keys = [(section, key) for section in EXACT_SECTIONS for key in current.get(section, {})]
    keys += [("train", key) for key in EXACT_TRAIN_KEYS]
    return [f"{section}.{key}" for section, key in keys
            if saved.get(section, {}).get(key) != current.get(section, {}).get(key)]


def continuation_warnings(path: Path, world_size: int, rank: int, mixed_precision: str,
                          config: dict) -> list[str]:
    """What makes continuing from `path` with `config` on this world size/precision/rank differ from an
    uninterrupted run."""
    _, meta = read_checkpoint_meta(path)
    warnings = []
    changed = changed_keys(meta.get("config", {}), config)
    if changed:
        warnings.append(f"{path.name} was trained with other values of {', '.join(changed)}: the continuation is "
                        "not exact")
    saved_world = meta.get("world_size")
    if saved_world is not None and saved_world != world_size:
        warnings.append(f"{path.name} was saved by {saved_world} process(es), this run has {world_size}: the "
                        "continuation is not exact (data order and noise differ from an uninterrupted run)")
    saved_precision = meta.get("mixed_precision")
    if saved_precision is not None and saved_precision != mixed_precision:
        warnings.append(f"{path.name} was trained in mixed precision {saved_precision}, this run uses "
                        f"{mixed_precision}")
    if not (path / f"random_states_{rank}.pkl").is_file():
        warnings.append(f"{path.name} holds no RNG state for rank {rank}: its random numbers start from the "
                        "seed instead (not exact)")
    return warnings
