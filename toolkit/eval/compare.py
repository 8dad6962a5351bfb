"""`cvae eval --compare A.json B.json`: paired differences between two models scored under the same protocol.

Each side is one report or several (comma-separated: runs of the same configuration with other seeds). For
every value both sides report per video (best-of-N PSNR, SSIM, LPIPS, mean-of-N, motion-region PSNR, ...):
- over videos: each video's value is averaged over a side's runs, d_v = A_v - B_v, and the difference is
  mean(d) ± 1.96 std(d) / sqrt(n) over the n videos (the protocols' interval), with the number of videos where
  A is better (higher; lower for LPIPS; for the diversity values: higher);
- over seeds (when both sides have two runs or more): each run's mean over videos; with as many runs on both
  sides they are paired in the order given (seed i against seed i) and the interval is Student-t over the
  per-seed differences, otherwise Welch's t over the two sides' run means. This is the interval that says
  whether a training difference, not one model's luck, is resolved.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from toolkit.errors import ToolkitError
from toolkit.eval.scoring import LOWER_IS_BETTER
from toolkit.eval.summary import half_width
from toolkit.sweep.stats import mean_ci95, mean_std, t95

MUST_AGREE = ("split", "n_past", "n_future", "samples")


def read_report(path: str) -> dict:
    """A `cvae eval` report with per-video values; ToolkitError naming the file otherwise."""
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ToolkitError(f"{path}: report not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ToolkitError(f"{path}: not a readable JSON report ({e})") from None
    if not isinstance(report, dict) or not report.get("per_sequence") or "keys" not in report:
        raise ToolkitError(f"{path}: not a cvae eval report with per-video values (per_sequence, keys)")
    return report


def _check_same_protocol(reports: list[tuple[str, dict]]) -> None:
    first_path, first = reports[0]
    for path, report in reports[1:]:
        name = report.get("protocol", {}).get("name", "lab")
        if name != first.get("protocol", {}).get("name", "lab"):
            raise ToolkitError(f"{path} was scored under protocol {name}, {first_path} under another: not comparable")
        for key in MUST_AGREE:
            if report.get(key) != first.get(key):
                raise ToolkitError(f"{path} has {key}={report.get(key)!r}, {first_path} {first.get(key)!r}: "
                                   f"not comparable")
        if report["keys"] != first["keys"]:
            raise ToolkitError(f"{path} and {first_path} scored other videos: a paired comparison needs the same ones")


def _runs(reports: list[dict], name: str) -> torch.Tensor:
    """[runs, videos] of one value."""
    return torch.tensor([r["per_sequence"][name] for r in reports], dtype=torch.float64)


def _over_seeds(a: torch.Tensor, b: torch.Tensor) -> tuple[float, str]:
    """Half-width of the 95% interval over runs of mean(A) - mean(B), and how it was formed."""
    ma, mb = a.nanmean(1).tolist(), b.nanmean(1).tolist()
    if len(ma) < 2 or len(mb) < 2:
        return math.nan, "one run per side"
    if len(ma) == len(mb):
        return mean_ci95([x - y for x, y in zip(ma, mb)])[1], f"paired over {len(ma)} seeds"
    (_, sa), (_, sb) = mean_std(ma), mean_std(mb)
    va, vb = sa ** 2 / len(ma), sb ** 2 / len(mb)
    df = (va + vb) ** 2 / (va ** 2 / (len(ma) - 1) + vb ** 2 / (len(mb) - 1)) if va + vb > 0 else 1
    return t95(max(1, int(df))) * math.sqrt(va + vb), f"Welch over {len(ma)} and {len(mb)} runs"


def compare(side_a: list[str], side_b: list[str]) -> dict:
    """The comparison of the two sides (lists of report paths): {"protocol", "videos", "runs", "rows": [...]},
    one row per value both sides have."""
    loaded = [(p, read_report(p)) for p in side_a + side_b]
    _check_same_protocol(loaded)
    a, b = [r for _, r in loaded[:len(side_a)]], [r for _, r in loaded[len(side_a):]]
    names = [k for k in a[0]["per_sequence"] if all(k in r["per_sequence"] for r in a + b)]
    rows = []
    for name in names:
        ra, rb = _runs(a, name), _runs(b, name)
        d = ra.nanmean(0) - rb.nanmean(0)
        finite = d[~d.isnan()]
        lower = name.removeprefix("baseline_").removesuffix("_mean") in LOWER_IS_BETTER
        wins = int((finite < 0).sum() if lower else (finite > 0).sum())
        seeds, how = _over_seeds(ra, rb)
        rows.append({"value": name, "a": float(ra.nanmean()), "b": float(rb.nanmean()),
                     "difference": float(finite.mean()), "ci_videos": float(half_width(finite)),
                     "ci_seeds": seeds, "seeds": how, "a_better": wins, "videos": int(finite.numel())})
    return {"protocol": a[0].get("protocol", {}).get("name", "lab"), "videos": len(a[0]["keys"]),
            "runs": [len(a), len(b)], "a": side_a, "b": side_b, "rows": rows}


def format_comparison(result: dict) -> str:
    """The comparison as a table: A, B, A - B with its intervals over videos and over seeds, videos A wins."""
    lines = [f"A: {', '.join(result['a'])}", f"B: {', '.join(result['b'])}",
             f"protocol {result['protocol']}, {result['videos']} videos, {result['runs'][0]} vs "
             f"{result['runs'][1]} run(s); intervals are 95%",
             f"{'value':>22s} {'A':>9s} {'B':>9s} {'A - B':>9s} {'± videos':>9s} {'± seeds':>9s}  A better on"]
    for r in result["rows"]:
        seeds = "" if math.isnan(r["ci_seeds"]) else f"{r['ci_seeds']:9.4f}"
        lines.append(f"{r['value']:>22s} {r['a']:9.4f} {r['b']:9.4f} {r['difference']:+9.4f} {r['ci_videos']:9.4f} "
                     f"{seeds:>9s}  {r['a_better']} of {r['videos']} videos")
    seeds = {r["seeds"] for r in result["rows"]}
    return "\n".join(lines + [f"over seeds: {', '.join(sorted(seeds))}"])
