"""`cvae eval CHECKPOINT --shards DIR --split test [--samples N]`: the reference protocol on a split.

Works alone or under `accelerate launch -m toolkit eval ...` (each rank scores its share of the split, the
per-sequence results are gathered, every sequence counts exactly once). Writes a JSON report (per-frame and
mean PSNR/SSIM for best-of-N and mean-of-N samples, the copy-last-frame baseline, the sequence keys) and prints a
table on the main process.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator

from toolkit.train.checkpoint import CHECKPOINTS, load_model
from toolkit.data.loader import eval_loader
from toolkit.data.shards.manifest import read_manifest
from toolkit.errors import ToolkitError
from toolkit.eval.protocol import PRECISIONS, evaluate
from toolkit.fsutil import atomic_write_text


def default_report_path(checkpoint: Path, split: str, samples: int) -> Path:
    """RUN_DIR/eval/{checkpoint}-{split}-n{samples}.json for checkpoints inside a run, else next to it."""
    name = f"{checkpoint.name}-{split}-n{samples}.json"
    if checkpoint.parent.name == CHECKPOINTS:
        return checkpoint.parent.parent / "eval" / name
    return checkpoint.parent / f"eval-{name}"


def format_table(report: dict) -> str:
    """The report as a readable table: one row per predicted frame (1-based frame numbers) and the mean."""
    n, pf, mean = report["samples"], report["per_frame"], report["mean"]
    columns = [(f"best-of-{n} PSNR", "psnr"), (f"mean-of-{n} PSNR", "psnr_mean"), ("copy-last PSNR", "baseline_psnr"),
               (f"best-of-{n} SSIM", "ssim"), (f"mean-of-{n} SSIM", "ssim_mean"), ("copy-last SSIM", "baseline_ssim"),
               (f"best-of-{n} motion", "motion_psnr"), ("copy-last motion", "baseline_motion_psnr")]
    first = report["n_past"] + 1
    lines = [f"{report['checkpoint']} on {report['split']} ({report['count']} sequences, {n} sample(s) each, "
             f"frames {first}..{report['n_past'] + report['n_future']})",
             "frame " + "".join(f"{title:>17s}" for title, _ in columns)]
    for t in range(report["n_future"]):
        lines.append(f"{first + t:5d} " + "".join(f"{pf[k][t]:17.4f}" for _, k in columns))
    lines.append(" mean " + "".join(f"{mean[k]:17.4f}" for _, k in columns))
    return "\n".join(lines)


def eval_checkpoint(checkpoint: str | Path, shards: str, split: str = "test", samples: int = 1,
                    n_future: int | None = None, batch_size: int = 16, num_workers: int = 1, limit: int = 0,
                    seed: int | None = None, out: str | Path | None = None, quiet: bool = False,
                    precision: str = "no") -> dict:
    """Evaluate a checkpoint on a split; returns the report (also written as JSON by the main process). `seed`
    None: the run's train.seed, which is what its validations used, so they are reproduced exactly."""
    if samples < 1 or batch_size < 1 or limit < 0 or (n_future is not None and n_future < 1):
        raise ToolkitError("--samples, --batch-size and --n-future must be >= 1 and --limit >= 0")
    if precision not in PRECISIONS:
        raise ToolkitError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    checkpoint = Path(checkpoint)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model, cfg, meta = load_model(checkpoint, accelerator.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_past, cond_dim = meta["model_args"]["n_past"], meta["model_args"]["cond_dim"]
    n_future = n_future or cfg.data.n_future
    seed = cfg.train.seed if seed is None else seed
    manifest = read_manifest(shards)
    if cond_dim and manifest.cond_dim != cond_dim:
        raise ToolkitError(f"{checkpoint} conditions on {cond_dim} values per frame, but {shards} has "
                           f"cond dim {manifest.cond_dim}")
    if n_past + n_future > manifest.seq_len:
        raise ToolkitError(f"n_past {n_past} + n_future {n_future} frames do not fit sequences of {manifest.seq_len}")
    loader = eval_loader(manifest, split, batch_size, n_past + n_future, rank=accelerator.process_index,
                         world_size=accelerator.num_processes, num_workers=num_workers, limit=limit,
                         use_cond=cond_dim > 0)
    result, _ = evaluate(model, loader, accelerator, n_past, n_future, samples=samples, seed=seed,
                         precision=precision)
    report = {"checkpoint": str(checkpoint), "shards": str(shards), "split": split, "n_past": n_past,
              "n_future": n_future, "seed": seed, "precision": precision, "world_size": accelerator.num_processes,
              **result.to_json()}
    if accelerator.is_main_process:
        path = Path(out) if out else default_report_path(checkpoint, split, samples)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        if not quiet:
            print(format_table(report))
            print(f"wrote {path}")
    accelerator.wait_for_everyone()
    return report
