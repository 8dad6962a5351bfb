"""`cvae plot RUN_DIR [RUN_DIR ...]`: training curves and per-frame PSNR from the local metrics, no W&B needed.

training_curves.png: MSE, KL loss, validation PSNR (dashed: copy-last-frame), validation SSIM, teacher forcing
ratio and KL weight over epochs, one colour per run (the curves of the reference lab's report). Runs are labelled
by their directory names less the `key=value` parts all of them share (sweep runs are named that way); runs
that differ only in `seed=N` are drawn as their mean with a band from the lowest to the highest seed.
psnr_per_frame.png: PSNR (and SSIM, LPIPS where the reports have them) per predicted frame from `cvae eval`
reports (RUN_DIR/eval/*.json, or JSON files given directly), each with its 95% interval over videos as a band,
and, without reports, from each run's last validation. latent.png: KL per z dimension and per time step, and
active units over epochs (`eval/latent.py`), from the reports and the runs' validations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from toolkit.errors import ToolkitError  # noqa: E402
from toolkit.fsutil import atomic_path  # noqa: E402
from toolkit.train.runlog import METRICS, read_metrics  # noqa: E402

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


def seed_groups(runs: dict[str, Path]) -> dict[str, list[Path]]:
    """Runs that differ only in their `seed=N` name part, grouped under the name without it (sweeps with
    --seeds name their runs that way); other runs stay alone."""
    groups: dict[str, list[Path]] = {}
    for label, run in runs.items():
        base = ",".join(p for p in label.split(",") if not re.fullmatch(r"seed=\d+", p)) or "all seeds"
        groups.setdefault(base, []).append(run)
    return groups


def _curves(runs: list[Path], kind: str, key: str) -> tuple[list[int], list[list[float]]]:
    """(epochs, one list of values per run) over the epochs every run has."""
    per_run = [{r["epoch"] + 1: r[key] for r in read_metrics(run, kind)} for run in runs]
    epochs = sorted(set.intersection(*(set(c) for c in per_run))) if per_run else []
    return epochs, [[c[e] for e in epochs] for c in per_run]


def plot_training(runs: dict[str, Path], out: Path) -> Path:
    """The panels over epochs, one colour per configuration: the mean over its seeds, shaded between their
    lowest and highest value where a configuration has several."""
    groups = seed_groups(runs)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), layout="constrained")
    for (key, kind, title), ax in zip(PANELS, axes.flat):
        for i, (label, members) in enumerate(groups.items()):
            colour, marker = f"C{i % 10}", "o" if kind == "val" else None
            epochs, values = _curves(members, kind, key)
            columns = list(zip(*values))
            n = f" (mean of {len(members)} seeds)" if len(members) > 1 else ""
            ax.plot(epochs, [sum(c) / len(c) for c in columns], color=colour, label=label + n, marker=marker,
                    markersize=3)
            if len(members) > 1:
                ax.fill_between(epochs, [min(c) for c in columns], [max(c) for c in columns], color=colour,
                                alpha=0.2, linewidth=0)
            if kind == "val" and epochs:
                baseline = list(zip(*_curves(members, kind, f"baseline_{key}")[1]))
                ax.plot(epochs, [sum(c) / len(c) for c in baseline], color=colour, linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _legend(fig, axes.flat[0], min(len(groups), 4))
    return _save(fig, out / "training_curves.png")


METRICS_PER_FRAME = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS (lower is better)"}


def _from_report(r: dict) -> dict:
    """A report's per-frame curves: each metric, its copy-last-frame baseline and its 95% half-widths."""
    pf = r["per_frame"]
    curves = {k: pf[k] for k in METRICS_PER_FRAME if k in pf}
    curves.update({f"baseline_{k}": pf[f"baseline_{k}"] for k in METRICS_PER_FRAME if f"baseline_{k}" in pf})
    return {"first": r["n_past"] + 1, "ci": r.get("per_frame_ci", {}), **curves}


def _per_frame_sources(runs: dict[str, Path], reports: list[Path]) -> list[tuple[str, dict]]:
    """(label, {"first": frame number, METRIC: [...], baseline_METRIC: [...], "ci": {METRIC: [...]}}) from eval
    reports or, without any, from each run's last validation."""
    found = [(p.stem, json.loads(p.read_text())) for p in reports]
    for label, run in runs.items():
        for p in sorted((run / "eval").glob("*.json")):
            found.append((f"{label}/{p.stem}", json.loads(p.read_text())))
    curves = [(label, _from_report(r)) for label, r in found]
    if not curves:
        for label, run in runs.items():
            val = read_metrics(run, "val")
            if val:
                curves.append((f"{label} (validation)", {"first": val[-1]["n_past"] + 1, "ci": {},
                                                         "psnr": val[-1]["psnr_per_frame"],
                                                         "baseline_psnr": val[-1]["baseline_psnr_per_frame"]}))
    return curves


def plot_per_frame(curves: list[tuple[str, dict]], out: Path) -> Path:
    """One panel per metric the sources have: best-of-N per predicted frame with its 95% interval over videos
    as a band (where the report has it), copy-last-frame dashed."""
    names = [k for k in METRICS_PER_FRAME if any(k in c for _, c in curves)]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), layout="constrained", squeeze=False)
    for ax, name in zip(axes[0], names):
        for i, (label, c) in enumerate(curves):
            if name not in c:
                continue
            frames, colour = list(range(c["first"], c["first"] + len(c[name]))), f"C{i % 10}"
            ax.plot(frames, c[name], color=colour, marker="o", markersize=3, label=label)
            if name in c["ci"]:
                low = [v - h for v, h in zip(c[name], c["ci"][name])]
                high = [v + h for v, h in zip(c[name], c["ci"][name])]
                ax.fill_between(frames, low, high, color=colour, alpha=0.2, linewidth=0)
            if f"baseline_{name}" in c:
                ax.plot(frames, c[f"baseline_{name}"], color=colour, linestyle="--", linewidth=1)
        ax.set_xlabel("frame")
        ax.set_ylabel(METRICS_PER_FRAME[name])
        ax.set_title(f"{METRICS_PER_FRAME[name]} per predicted frame")
        ax.grid(alpha=0.3)
    fig.suptitle("best of N per frame; band: 95% interval over videos; dashed: copy last frame", fontsize=9)
    _legend(fig, axes[0][0], min(len(curves), 2))
    return _save(fig, out / "psnr_per_frame.png")


def _latent_sources(runs: dict[str, Path], reports: list[Path]) -> list[tuple[str, dict]]:
    """(label, {"kl_per_step", "kl_per_dim", "active": [(epoch, active units)]}) from eval reports and the runs'
    validation records (records written before the latent diagnostics existed have none)."""
    found = []
    for p in reports:
        latent = json.loads(p.read_text()).get("latent")
        if latent:
            found.append((p.stem, {**latent, "active": []}))
    for label, run in runs.items():
        val = [r for r in read_metrics(run, "val") if "kl_per_dim" in r]
        if val:
            found.append((label, {"kl_per_step": val[-1]["kl_per_step"], "kl_per_dim": val[-1]["kl_per_dim"],
                                  "active": [(r["epoch"] + 1, r["active_units"]) for r in val]}))
    return found


def plot_latent(sources: list[tuple[str, dict]], out: Path) -> Path:
    """latent.png: KL per z dimension and per time step (the last validation, or the report), active units over
    epochs: what of the latent the model uses."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), layout="constrained")
    width = 0.8 / len(sources)
    for i, (label, s) in enumerate(sources):
        colour = f"C{i % 10}"
        dims = range(len(s["kl_per_dim"]))
        axes[0].bar([d + i * width for d in dims], s["kl_per_dim"], width, color=colour, label=label)
        axes[1].plot(range(1, len(s["kl_per_step"]) + 1), s["kl_per_step"], color=colour, marker="o", markersize=3)
        if s["active"]:
            axes[2].plot(*zip(*s["active"]), color=colour, marker="o", markersize=3)
    for ax, (title, xlabel) in zip(axes, [("KL per z dimension (nats, mean over steps)", "dimension"),
                                          ("KL per time step (nats, summed over z)", "step"),
                                          ("active units (posterior-mean variance > 0.01)", "epoch")]):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0], min(len(sources), 3))
    return _save(fig, out / "latent.png")


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
    latent = _latent_sources(runs, reports)
    if latent:
        written.append(plot_latent(latent, out))
    for path in written:
        print(f"wrote {path}")
    return written
