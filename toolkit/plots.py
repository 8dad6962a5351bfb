"""`cvae plot RUN_DIR [RUN_DIR ...]`: training curves and per-frame PSNR from the local metrics, no W&B needed.

training_curves.png: MSE, KL loss, validation PSNR (dashed: copy-last-frame), validation SSIM, teacher forcing
ratio and KL weight over epochs, one colour per run (the curves of the reference lab's report). Runs are labelled
by their directory names less the `key=value` parts all of them share (sweep runs are named that way).
psnr_per_frame.png: PSNR per predicted frame from `cvae eval` reports (RUN_DIR/eval/*.json, or JSON files given
directly) and, without reports, from each run's last validation.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from toolkit.errors import ToolkitError  # noqa: E402
from toolkit.fsutil import atomic_path  # noqa: E402
from toolkit.tracking import METRICS, read_metrics  # noqa: E402

PANELS = [("mse", "epoch", "MSE (sum over steps)"), ("kld", "epoch", "KL loss"),
          ("psnr", "val", "validation PSNR (dB); dashed: copy last frame"),
          ("ssim", "val", "validation SSIM; dashed: copy last frame"),
          ("tfr", "epoch", "teacher forcing ratio"), ("beta", "epoch", "KL weight")]


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def short_labels(names: list[str]) -> list[str]:
    """Names less the comma-separated parts every name has ("a=1,b=2", "a=1,b=3" -> "b=2", "b=3"); the names
    themselves where that would make two alike."""
    parts = [name.split(",") for name in names]
    shared = set.intersection(*map(set, parts)) if len(names) > 1 else set()
    short = [",".join(p for p in ps if p not in shared) or name for name, ps in zip(names, parts)]
    return short if len(set(short)) == len(short) else names


def _legend(fig, ax, ncols: int) -> None:
    """One legend for the figure, below the panels."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=8)


def plot_training(runs: dict[str, Path], out: Path) -> Path:
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), layout="constrained")
    for (key, kind, title), ax in zip(PANELS, axes.flat):
        for i, (label, run) in enumerate(runs.items()):
            records = read_metrics(run, kind)
            colour = f"C{i % 10}"
            ax.plot([r["epoch"] + 1 for r in records], [r[key] for r in records], color=colour, label=label,
                    marker="o" if kind == "val" else None, markersize=3)
            if kind == "val" and records:
                ax.plot([r["epoch"] + 1 for r in records], [r[f"baseline_{key}"] for r in records], color=colour,
                        linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _legend(fig, axes.flat[0], min(len(runs), 4))
    return _save(fig, out / "training_curves.png")


def _per_frame_sources(runs: dict[str, Path], reports: list[Path]) -> list[tuple[str, dict]]:
    """(label, {"first": frame number, "psnr": [...], "baseline": [...]}) from eval reports or last validations."""
    found = [(p.stem, json.loads(p.read_text())) for p in reports]
    for label, run in runs.items():
        for p in sorted((run / "eval").glob("*.json")):
            found.append((f"{label}/{p.stem}", json.loads(p.read_text())))
    curves = [(label, {"first": r["n_past"] + 1, "psnr": r["per_frame"]["psnr"],
                       "baseline": r["per_frame"]["baseline_psnr"]}) for label, r in found]
    if not curves:
        for label, run in runs.items():
            val = read_metrics(run, "val")
            if val:
                curves.append((f"{label} (validation)", {"first": val[-1]["n_past"] + 1,
                                                         "psnr": val[-1]["psnr_per_frame"],
                                                         "baseline": val[-1]["baseline_psnr_per_frame"]}))
    return curves


def plot_per_frame(curves: list[tuple[str, dict]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for i, (label, c) in enumerate(curves):
        frames = list(range(c["first"], c["first"] + len(c["psnr"])))
        ax.plot(frames, c["psnr"], color=f"C{i % 10}", marker="o", markersize=3, label=label)
        ax.plot(frames, c["baseline"], color=f"C{i % 10}", linestyle="--", linewidth=1)
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR per predicted frame; dashed: copy last frame")
    ax.grid(alpha=0.3)
    _legend(fig, ax, min(len(curves), 2))
    return _save(fig, out / "psnr_per_frame.png")


def plot(paths: list[str | Path], out: str | Path | None = None) -> list[Path]:
    """Plot run directories (and eval report JSONs); returns the written PNG paths."""
    runs, reports = {}, []
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".json":
            reports.append(p)
        elif (p / METRICS).is_file():
            runs[p.name if p.name not in runs else str(p)] = p
        else:
            raise ToolkitError(f"{p}: not a run directory (no {METRICS}) or an eval report (.json)")
    out = Path(out) if out else (next(iter(runs.values())) if runs else Path("."))
    runs = dict(zip(short_labels(list(runs)), runs.values()))
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_training(runs, out)] if runs else []
    curves = _per_frame_sources(runs, reports)
    if curves:
        written.append(plot_per_frame(curves, out))
    for path in written:
        print(f"wrote {path}")
    return written
