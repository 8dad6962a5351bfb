"""Per-video rows to the numbers a report gives: means per frame and overall, with 95% intervals over videos.

Every value is the mean over videos of a per-video value (a metric's best-of-N or mean-of-N per frame, averaged
over the predicted frames for the overall figure), with the interval mean ± 1.96 std / sqrt(n) over the n
videos (SVG's and SRVP's form; std with ddof 1). Rows are sorted by key first, so the sums, and every digit of
the result, do not depend on how the videos were split across ranks or batches. NaN values (the motion-region
PSNR of a frame where nothing moves) are left out of the means.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

Z95 = 1.96
"""The normal 97.5% quantile: intervals are mean ± Z95 * std / sqrt(n) over videos."""


@dataclass
class EvalResult:
    count: int
    """Videos evaluated (over all ranks)."""
    samples: int
    """Samples per video (best-of-N / mean-of-N)."""
    per_frame: dict[str, list[float]]
    """Each value per predicted frame, averaged over videos: METRIC (best-of-N), METRIC_mean (mean-of-N),
    baseline_METRIC (copy-last-frame), motion_psnr, baseline_motion_psnr, pixel_std, lpips_diversity."""
    per_frame_ci: dict[str, list[float]] = field(default_factory=dict)
    """Half-width of the 95% interval over videos of each per-frame value."""
    mean: dict[str, float] = field(default_factory=dict)
    """Each value averaged over all (video, predicted frame) pairs (equal to the mean over videos of their
    frame means, except motion-region PSNR, whose frames without motion are left out)."""
    ci: dict[str, float] = field(default_factory=dict)
    """Half-width of the 95% interval over videos of each mean."""
    keys: list[str] = field(default_factory=list)
    """The videos evaluated, sorted."""
    per_sequence: dict[str, list[float]] = field(default_factory=dict)
    """Each value averaged over a video's predicted frames (in `keys` order): for paired comparisons
    (`cvae eval --compare`) of two models on the same videos."""
    fvd: dict = field(default_factory=dict)
    """{"fvd": value, "real": clips, "generated": clips} when the protocol has FVD and it was computed."""
    latent: dict = field(default_factory=dict)
    """How much of the latent the model uses (`latent.summarize_latent`): KL per step and per dimension, active
    units."""

    def to_json(self) -> dict:
        return asdict(self)


def half_width(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Z95 * std / sqrt(n) over the finite entries along `dim` (NaN with fewer than 2)."""
    finite = ~values.isnan()
    n = finite.sum(dim)
    mean = values.nanmean(dim, keepdim=True)
    var = torch.where(finite, (values - mean).square(), 0.0).sum(dim) / (n - 1).clamp_min(1)
    return torch.where(n >= 2, Z95 * var.sqrt() / n.clamp_min(1).sqrt(), math.nan)


def summarize(rows: list[dict], samples: int) -> EvalResult:
    """Average per-video rows ({key, VALUE: per-frame list, ...}) over all videos, in key order."""
    if not rows:
        return EvalResult(count=0, samples=samples, per_frame={})
    rows = sorted(rows, key=lambda r: r["key"])
    names = [k for k in rows[0] if k != "key"]
    table = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in names}  # [videos, frames]
    per_video = {k: v.nanmean(1) for k, v in table.items()}
    return EvalResult(
        count=len(rows), samples=samples,
        per_frame={k: v.nanmean(0).tolist() for k, v in table.items()},
        per_frame_ci={k: half_width(v).tolist() for k, v in table.items()},
        mean={k: float(v.nanmean()) for k, v in table.items()},
        ci={k: float(half_width(v)) for k, v in per_video.items()},
        keys=[r["key"] for r in rows],
        per_sequence={k: v.tolist() for k, v in per_video.items()})
