"""The results of a sweep: each run's summary from its metrics.jsonl, and the table over configurations with
the mean and the Student-t 95% confidence interval over seeds (`results.md`, `results.csv`, `runs.csv`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from toolkit.sweep.spec import SEED
from toolkit.sweep.stats import mean_ci95
from toolkit.train.runlog import read_metrics


def ended(final: list[dict], epochs: int | None = None) -> bool:
    """Whether a run's final records say it ran to its end (not stopped by a signal), and, given `epochs`,
    after at least that many: a run whose recipe was lengthened since has not ended."""
    return bool(final) and not final[-1]["stopped"] and (epochs is None or final[-1]["epoch"] >= epochs)


def summarize_run(run_dir: Path, epochs: int | None = None) -> dict:
    """A run's best and last validation; status "done" once it `ended` (after `epochs`, when given)."""
    val = read_metrics(run_dir, "val")
    final = read_metrics(run_dir, "final")
    if not val:
        return {"status": "failed" if not final else "no validation"}
    best, last = max(val, key=lambda r: r["psnr"]), val[-1]
    return {"status": "done" if ended(final, epochs) else "incomplete",
            "best_psnr": best["psnr"], "best_epoch": best["epoch"] + 1, "final_psnr": last["psnr"],
            "final_ssim": last["ssim"], "baseline_psnr": last["baseline_psnr"], "epochs": last["epoch"] + 1,
            # absent from runs older than the motion-region PSNR and the latent diagnostics
            "final_motion_psnr": last.get("motion_psnr"), "final_kl": last.get("kl"),
            "final_active_units": last.get("active_units"),
            # with train.val_samples > 1: mean-of-N PSNR and the per-pixel std over the samples
            "final_psnr_mean": last.get("psnr_mean") if last.get("samples", 1) > 1 else None,
            "final_pixel_std": last.get("pixel_std") if last.get("samples", 1) > 1 else None}


def _group(rows: list[dict], params: list[str]) -> list[tuple[dict, list[dict]]]:
    """Runs grouped by configuration (every parameter but train.seed), in first-seen order."""
    groups: dict[tuple, tuple[dict, list[dict]]] = {}
    for r in rows:
        config = {p: r["config"][p] for p in params if p != SEED}
        groups.setdefault(tuple(map(str, config.values())), (config, []))[1].append(r)
    return list(groups.values())


def _ci_cell(stats: tuple[float, float, int], digits: int) -> str:
    mean, half, n = stats
    if n == 0:
        return ""
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if n > 1 else "")


COLUMNS = [("best_psnr", "best val PSNR", 2), ("final_psnr", "final val PSNR", 2), ("final_ssim", "final SSIM", 3),
           ("baseline_psnr", "copy-last PSNR", 2), ("final_motion_psnr", "motion PSNR", 2),
           ("final_kl", "KL (nats/video)", 3), ("final_active_units", "active units", 1)]
"""Per configuration, over its finished seeds: validation PSNR (best and final), SSIM, copy-last-frame, the
motion-region PSNR, and how much of the latent is used (its KL per video and its active units, eval/latent.py)."""

SAMPLED = [("final_psnr_mean", "final mean-of-N PSNR", 2), ("final_pixel_std", "sample diversity (pixel std)", 4)]
"""Columns of runs validated with several samples per video (train.val_samples): the final validation's
mean-of-N PSNR (the PSNR column is then best-of-N) and the per-pixel standard deviation over the samples."""


def results_table(rows: list[dict], params: list[str]) -> tuple[str, str]:
    """(Markdown, CSV) with one row per configuration: mean ± 95% CI (Student t over the finished seeds) of each of
    `COLUMNS` (and of `SAMPLED` when some run has them), n finished runs and the status."""
    names = [p for p in params if p != SEED]
    columns = COLUMNS + [c for c in SAMPLED if any(r.get(c[0]) is not None for r in rows)]
    md = ["| " + " | ".join([p.split(".")[-1] for p in names] + [t for _, t, _ in columns] + ["n", "status"]) + " |",
          "|" + "---|" * (len(names) + len(columns) + 2)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(names + [f"{c}_{x}" for c, _, _ in columns for x in ("mean", "ci95")] + ["n", "runs", "status"])
    for config, runs in _group(rows, params):
        done = [r for r in runs if r["status"] == "done"]
        stats = {c: mean_ci95([r[c] for r in done if r.get(c) is not None]) for c, _, _ in columns}
        status = "done" if len(done) == len(runs) else ", ".join(sorted({r["status"] for r in runs} - {"done"}))
        md.append("| " + " | ".join([str(config[p]) for p in names] + [_ci_cell(stats[c], d) for c, _, d in columns]
                                    + [str(len(done)), status]) + " |")
        writer.writerow([config[p] for p in names] + [v for c, _, _ in columns for v in stats[c][:2]]
                        + [len(done), " ".join(r["name"] for r in runs), status])
    return "\n".join(md) + "\n", buf.getvalue()


def runs_csv(rows: list[dict], params: list[str]) -> str:
    """One row per run: its parameters and results."""
    cols = ["best_psnr", "best_epoch", "final_psnr", "final_ssim", "baseline_psnr", "final_motion_psnr", "final_kl",
            "final_active_units", "final_psnr_mean", "final_pixel_std", "status"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run"] + params + cols)
    for r in rows:
        writer.writerow([r["name"]] + [r["config"].get(p, "") for p in params] + [r.get(c, "") for c in cols])
    return buf.getvalue()
