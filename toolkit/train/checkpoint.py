"""Checkpoints: `accelerator.save_state`/`load_state` plus the trainer's state as JSON, atomic, verified, rotated.

Layout: `{run_dir}/checkpoints/{name}/` with accelerate's files (model.safetensors, optimizer.bin, scaler.pt,
random_states_{rank}.pkl) and `train_state.json`: epoch/step counters, best PSNR, non-finite count, partial
epoch sums, W&B run id, the full resolved config that built the model, the world size and mixed precision it
was saved with, and the size and sha256 of every other file. Names are `epoch_000012` (end of an epoch) or
`epoch_000012_step_000345` (taken mid-epoch on SIGTERM/SIGINT), plus `best`.

Every rank writes into `.tmp-{name}`; after a barrier the main process checksums the files, adds
train_state.json and renames the directory into place, so a killed run never leaves a checkpoint that looks
complete but is not, and a file damaged later (a full disk, a truncated copy) is caught by `verify` before
anything is loaded. Only the last `keep_last` periodic checkpoints and `best` are kept. The train state is
JSON rather than an object registered with `register_for_checkpointing`, because accelerate loads registered
objects with `weights_only=False` (unpickling arbitrary code); everything loaded here uses `weights_only=True`
(and safetensors for the weights).
"""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file

from toolkit.errors import ToolkitError
from toolkit.fsutil import TMP_PREFIX, atomic_write_text, file_sha256, replace_dir

CHECKPOINTS = "checkpoints"
BEST = "best"
STATE_FILE = "train_state.json"
_NAME = re.compile(r"^epoch_(\d{6})(?:_step_(\d{6}))?$")


@dataclass
class TrainState:
    epoch: int = 0
    """Epoch to run next (epochs completed so far)."""
    step_in_epoch: int = 0
    """Batches of `epoch` already done (non-zero only in a mid-epoch checkpoint)."""
    global_step: int = 0
    """Optimizer steps taken."""
    best_psnr: float = -math.inf
    """Best validation PSNR so far."""
    best_epoch: int = -1
    """Epoch (1-based count of completed epochs) that reached best_psnr."""
    nonfinite: int = 0
    """Steps skipped because the loss or the gradients were not finite."""
    epoch_sums: list = field(default_factory=list)
    """Running sums of the current epoch's metrics (to resume mid-epoch; see `step.EPOCH_SUMS`)."""
    validation_due: bool = False
    """The last completed epoch's validation has not run yet (a stop signal on its last batch): a resumed run
    runs it first, so it logs what an uninterrupted run logs."""
    wandb_run_id: str = ""
    """The W&B run this training logs to (a resumed run continues it)."""
    schedule: dict = field(default_factory=dict)
    """Teacher forcing ratio and KL weight in use when saved (they are pure functions of epoch and step, so a
    resumed run recomputes the same values; recorded for inspection)."""

    def to_json(self) -> dict:
        d = asdict(self)
        d["best_psnr"] = None if math.isinf(self.best_psnr) else self.best_psnr
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainState":
        d = dict(d)
        d["best_psnr"] = -math.inf if d.get("best_psnr") is None else float(d["best_psnr"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def checkpoint_name(epoch: int, step_in_epoch: int = 0) -> str:
    return f"epoch_{epoch:06d}" + (f"_step_{step_in_epoch:06d}" if step_in_epoch else "")


def _order(name: str) -> tuple[int, int] | None:
    m = _NAME.match(name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Periodic checkpoints that have a train state, oldest first (temporaries and `best` excluded)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _order(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: _order(p.name))


def save_checkpoint(accelerator: Accelerator, run_dir: str | Path, name: str, state: TrainState, meta: dict,
                    keep_last: int | None = None) -> Path:
    """Save model/optimizer/scaler/RNG + train state as `checkpoints/{name}` (all ranks must call this).

    `meta` holds what rebuilds the model without the run: {"config": resolved config dict, "model_args":
    {"cond_dim", "n_past", "channels"}}.
    """
    root = Path(run_dir) / CHECKPOINTS
    final, tmp = root / name, root / f"{TMP_PREFIX}{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(tmp.iterdir())}
        payload = {"train_state": state.to_json(), **meta, "world_size": accelerator.num_processes,
                   "mixed_precision": accelerator.mixed_precision, "files": files}
        atomic_write_text(tmp / STATE_FILE, json.dumps(payload, indent=2) + "\n")
        replace_dir(tmp, final)
        if keep_last is not None:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_checkpoint_meta(path: str | Path) -> tuple[TrainState, dict]:
    """(train state, meta {"config", "model_args", "world_size", "mixed_precision", "files"}) of a checkpoint;
    ToolkitError if it is not one. Checkpoints from before checksums were recorded have no "files"."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ToolkitError(f"{path}: not a checkpoint (no {STATE_FILE}); checkpoints live in RUN_DIR/{CHECKPOINTS}/")
    try:
        payload = json.loads(state_file.read_text())
        meta = {"config": payload["config"], "model_args": payload["model_args"],
                **{k: payload[k] for k in ("world_size", "mixed_precision", "files") if k in payload}}
        return TrainState.from_json(payload["train_state"]), meta
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ToolkitError(f"{state_file}: unreadable train state ({e})") from None


def verify(path: str | Path) -> str | None:
    """What is wrong with a checkpoint (a missing, resized or altered file, an unreadable train state), or
    None when every recorded file has its recorded size and sha256."""
    try:
        _, meta = read_checkpoint_meta(path)
    except ToolkitError as e:
        return str(e)
    for name, info in meta.get("files", {}).items():
        f = Path(path) / name
        if not f.is_file():
            return f"{f}: missing"
        if f.stat().st_size != info["bytes"]:
            return f"{f}: {f.stat().st_size} bytes, {info['bytes']} recorded (truncated or replaced)"
        if file_sha256(f) != info["sha256"]:
            return f"{f}: sha256 differs from the recorded one (corrupted)"
    return None


def check_same_model(saved: dict, current: dict, where: str) -> None:
    """Raise a clear error when checkpoint meta `saved` describes another model than `current`."""
    diffs = [f"model.{k}: checkpoint {saved['config']['model'].get(k)!r}, now {v!r}"
             for k, v in current["config"]["model"].items() if saved["config"]["model"].get(k) != v]
    diffs += [f"{k}: checkpoint {saved['model_args'].get(k)!r}, now {v!r}"
              for k, v in current["model_args"].items() if saved["model_args"].get(k) != v]
    if diffs:
        raise ToolkitError(f"{where}: the checkpoint was made with a different model configuration ("
                           + "; ".join(diffs) + ")")


def load_checkpoint(accelerator: Accelerator, path: str | Path, meta: dict) -> TrainState:
    """Restore model/optimizer/scaler/RNG (weights_only loads) and return the stored train state; a clear error
    first if the checkpoint's meta describes another model than `meta`. Call `verify` first."""
    state, saved = read_checkpoint_meta(path)
    check_same_model(saved, meta, str(path))
    try:
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    except pickle.UnpicklingError as e:
        raise ToolkitError(f"{path}: refusing to load a file that is not weights-only ({e})") from None
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(SVG in eval mode, Config, meta) rebuilt from a checkpoint's own config; weights from safetensors only."""
    from toolkit.config import from_dict
    from toolkit.model import SVG

    path = Path(path)
    _, meta = read_checkpoint_meta(path)
    cfg = from_dict(meta["config"], where=str(path / STATE_FILE))
    model = SVG(cfg.model, **meta["model_args"])
    weights_file = path / "model.safetensors"
    try:
        weights = load_file(weights_file, device="cpu")
    except (OSError, SafetensorError) as e:
        raise ToolkitError(f"{weights_file}: cannot read the model weights ({e})") from None
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [f"{k} is {tuple(weights[k].shape)}, the model has {tuple(v.shape)}"
                 for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    if problems:
        raise ToolkitError(f"{weights_file} does not fit the model its {STATE_FILE} describes (a different model "
                           f"configuration?): " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
    model.load_state_dict(weights)
    return model.to(device).eval(), cfg, meta


def clean_temporaries(run_dir: str | Path) -> None:
    """Remove `.tmp-*` leftovers of a killed save; a checkpoint whose replacement was killed between its two
    renames (`fsutil.replace_dir`) is put back first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX) and ".old." in p.name:
            for old in p.iterdir():
                if not (root / old.name).exists():
                    old.rename(root / old.name)
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
