"""`cvae eval CHECKPOINT --shards DIR --split test --protocol NAME`: a checkpoint scored under a named protocol.

Works alone or under `accelerate launch -m toolkit eval ...` (each rank scores its share of the split, the
per-video results are gathered, every video counts exactly once). Writes a JSON report, which carries the
protocol's record, the package versions and the sha256 of every weight file used, and prints a table on the
main process. LPIPS and FVD need weight files that are not downloaded at run time (`cvae weights fetch`); when
one is absent the evaluation stops before any work, naming the file, unless `--skip` leaves that metric out,
which the report then says.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator

from toolkit.data.loader import eval_loader
from toolkit.data.shards.manifest import read_manifest
from toolkit.errors import ToolkitError
from toolkit.eval.evaluate import PRECISIONS, evaluate
from toolkit.eval.protocols import bind, get_protocol
from toolkit.eval.table import format_table
from toolkit.fsutil import atomic_write_text
from toolkit.train.checkpoint import CHECKPOINTS, load_model

SKIPPABLE = ("lpips", "fvd")


def default_report_path(checkpoint: Path, split: str, protocol: str, samples: int) -> Path:
    """RUN_DIR/eval/{checkpoint}-{split}-{protocol}-n{samples}.json for checkpoints inside a run, else next to it:
    two protocols never share a report."""
    name = f"{checkpoint.name}-{split}-{protocol}-n{samples}.json"
    if checkpoint.parent.name == CHECKPOINTS:
        return checkpoint.parent.parent / "eval" / name
    return checkpoint.parent / f"eval-{name}"


def load_scorers(protocol, device: torch.device, skip: tuple[str, ...], lpips_weights: str | None,
                 i3d_weights: str | None) -> tuple[object, object, dict, list]:
    """(lpips callable or None, FVDSets or None, {metric: why not computed}, [record of each weight file
    loaded: path, sha256, check]) for the protocol.
    A weight file that is absent raises ToolkitError naming it, unless its metric is in `skip`."""
    lpips = fvd = None
    not_computed, weights = {}, []
    if "lpips" in protocol.metrics:
        if "lpips" in skip:
            not_computed["lpips"] = "left out by --skip lpips"
        else:
            from toolkit.eval import perceptual

            net = perceptual.load_lpips(device, lpips_weights, net=protocol.lpips_net)
            weights += net.weight_records
            lpips = lambda pred, target: perceptual.lpips_per_frame(net, pred, target)  # noqa: E731
    if protocol.fvd is not None:
        if "fvd" in skip:
            not_computed["fvd"] = "left out by --skip fvd"
        else:
            from toolkit.eval import fvd as fvd_module
            from toolkit.eval.fvd_sets import FVDSets

            net = fvd_module.load_i3d(i3d_weights, device)
            weights += net.weight_records
            fvd = FVDSets(protocol.fvd, net)
    return lpips, fvd, not_computed, weights


def versions() -> dict:
    """Versions of the packages whose code makes the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("cvae-video", "torch", "torchvision", "lpips", "cd-fvd", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _progress(accelerator: Accelerator, total: int, quiet: bool, what: str):
    """A tqdm bar (videos, with ETA) on the main process, else None."""
    if quiet or not accelerator.is_main_process:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc=what, leave=False, dynamic_ncols=True)


def eval_checkpoint(checkpoint: str | Path, shards: str, split: str = "test", protocol: str = "lab",
                    samples: int | None = None, n_future: int | None = None, batch_size: int = 16,
                    num_workers: int = 1, limit: int = 0, seed: int | None = None, out: str | Path | None = None,
                    quiet: bool = False, precision: str = "no", skip: tuple[str, ...] = (),
                    lpips_weights: str | None = None, i3d_weights: str | None = None) -> dict:
    """Evaluate a checkpoint on a split under a protocol; returns the report (also written as JSON by the main
    process). `seed` None: the run's train.seed, which is what its validations used, so the lab protocol
    reproduces them exactly."""
    if (samples is not None and samples < 1) or batch_size < 1 or limit < 0:
        raise ToolkitError("--samples and --batch-size must be >= 1 and --limit >= 0")
    if precision not in PRECISIONS:
        raise ToolkitError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if any(s not in SKIPPABLE for s in skip):
        raise ToolkitError(f"--skip takes {', '.join(SKIPPABLE)}, got {','.join(skip)}")
    checkpoint = Path(checkpoint)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model, cfg, meta = load_model(checkpoint, accelerator.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    cond_dim = meta["model_args"]["cond_dim"]
    manifest = read_manifest(shards)
    if cond_dim and manifest.cond_dim != cond_dim:
        raise ToolkitError(f"{checkpoint} conditions on {cond_dim} values per frame, but {shards} has "
                           f"cond dim {manifest.cond_dim}")
    bound = bind(get_protocol(protocol), meta["model_args"]["n_past"], cfg.data.n_future, cond_dim,
                 manifest.seq_len, samples, n_future)
    if limit:
        bound = replace(bound, extra={**bound.extra, "limit": f"the first {limit} videos of the split only"})
    lpips, fvd, not_computed, weights = load_scorers(bound, accelerator.device, tuple(skip), lpips_weights,
                                                     i3d_weights)
    seed = cfg.train.seed if seed is None else seed
    loader = eval_loader(manifest, split, batch_size, bound.n_past + bound.n_future, rank=accelerator.process_index,
                         world_size=accelerator.num_processes, num_workers=num_workers, limit=limit,
                         use_cond=cond_dim > 0)
    total = len(range(accelerator.process_index, limit or manifest.count(split), accelerator.num_processes))
    bar = _progress(accelerator, total, quiet, f"{protocol}, {bound.samples} sample(s)")
    start = time.perf_counter()
    result, _ = evaluate(model, loader, accelerator, bound, seed=seed, precision=precision, lpips=lpips, fvd=fvd,
                         progress=bar.update if bar else None)
    seconds = time.perf_counter() - start
    if bar:
        bar.close()
    report = {"checkpoint": str(checkpoint), "shards": str(shards), "split": split, "protocol": bound.record(),
              "n_past": bound.n_past, "n_future": bound.n_future, "seed": seed, "precision": precision,
              "world_size": accelerator.num_processes, "versions": versions(), "weights": weights,
              "not_computed": not_computed, "seconds": round(seconds, 3), **result.to_json()}
    if accelerator.is_main_process:
        path = Path(out) if out else default_report_path(checkpoint, split, protocol, bound.samples)
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        if not quiet:
            print(format_table(report))
            print(f"wrote {path}")
    accelerator.wait_for_everyone()
    return report
