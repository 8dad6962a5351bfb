"""Scores of one batch of videos over N samples, kept as running values: the N predictions are never held.

`BatchScores.add` takes a chunk of samples' predictions [S, B, T, C, H, W] and updates, per metric, the best
sample so far (by its mean over the T predicted frames: higher PSNR and SSIM, lower LPIPS; ties keep the lower
sample index, as an argmax over all N would), the sums for mean-of-N, and the diversity sums. `rows` then gives
one row per video: each metric's best-of-N and mean-of-N per frame, copy-last-frame's, the motion-region PSNR
of the sample best by PSNR, and the sample diversity.
"""

from __future__ import annotations

import torch

from toolkit.eval import metrics

LOWER_IS_BETTER = frozenset({"lpips"})


class BatchScores:
    """Running best-of-N per metric for B videos: past [B, n_past, C, H, W], future [B, T, C, H, W] in [0, 1];
    `lpips` a callable (pred, target) -> [B', T] or None when the protocol has no LPIPS."""

    def __init__(self, protocol, past: torch.Tensor, future: torch.Tensor, lpips=None) -> None:
        self.metrics = [m for m in protocol.metrics if m != "lpips" or lpips is not None]
        self.per_channel = protocol.psnr == "per_channel"
        self.past, self.future, self.lpips = past, future, lpips
        self.future64 = future.double()  # converted once for every sample's squared error
        self.moving = metrics.motion_mask(past[:, -1], future)
        self.ssim_reference = metrics.ssim_reference(future) if "ssim" in self.metrics else None
        self.count = 0
        self.best: dict[str, torch.Tensor] = {}  # metric -> [B, T] of the chosen sample
        self.key: dict[str, torch.Tensor] = {}  # metric -> [B] its mean over frames
        self.sums: dict[str, torch.Tensor] = {}  # metric -> [B, T] summed over samples
        self.motion = self.best_frames = None  # of the sample best by PSNR: [B, T] and [B, T, C, H, W]
        self.shift = self.pixel_sum = self.pixel_sq = None  # [B, T, C, H, W]: per-pixel std over samples
        self.pair_lpips, self.pairs = None, 0  # LPIPS between samples 2k and 2k+1: [B, T] summed

    def frame_scores(self, preds: torch.Tensor, sq: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each metric of predictions [B, T, C, H, W] against the future, given their squared error `sq`
        (`metrics.squared_error`): {metric: [B, T] float64}."""
        out = {"psnr": metrics.psnr_of(sq, per_channel=self.per_channel)}
        if "ssim" in self.metrics:
            out["ssim"] = metrics.ssim(preds, self.future, self.ssim_reference)
        if "lpips" in self.metrics:
            out["lpips"] = self.lpips(preds, self.future)
        return out

    def add(self, preds: torch.Tensor) -> None:
        """Samples self.count .. self.count + S - 1: predictions [S, B, T, C, H, W] (float32)."""
        for pred in preds:
            sq = metrics.squared_error(pred, self.future64)
            for name, value in self.frame_scores(pred, sq).items():
                self._keep_best(name, value, pred, sq)
                self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
            self._add_pixels(pred)
            self.count += 1
        self._add_pairs(preds)

    def _keep_best(self, name: str, value: torch.Tensor, pred: torch.Tensor, sq: torch.Tensor) -> None:
        key = value.mean(dim=1)
        if name not in self.best:
            better = torch.ones_like(key, dtype=torch.bool)
        else:
            better = key < self.key[name] if name in LOWER_IS_BETTER else key > self.key[name]
        self.key[name] = torch.where(better, key, self.key[name]) if name in self.key else key
        self.best[name] = torch.where(better[:, None], value, self.best[name]) if name in self.best else value
        if name == "psnr":
            motion = metrics.masked_psnr_of(sq, self.moving)
            self.motion = motion if self.motion is None else torch.where(better[:, None], motion, self.motion)
            mask = better.view(-1, *[1] * (pred.dim() - 1))
            self.best_frames = pred.clone() if self.best_frames is None else torch.where(mask, pred, self.best_frames)

    def _add_pixels(self, pred: torch.Tensor) -> None:
        """Per-pixel sums over samples of the difference from sample 0 (the shifted-data variance: the
        differences are small, so float32 sums of them and of their squares keep the variance to ~1e-6 of
        itself, where raw sums of squares would cancel), one sample at a time."""
        if self.shift is None:
            self.shift = pred.clone()
            self.pixel_sum, self.pixel_sq = torch.zeros_like(pred), torch.zeros_like(pred)
            return
        d = pred - self.shift
        self.pixel_sum += d
        self.pixel_sq.addcmul_(d, d)

    def _add_pairs(self, preds: torch.Tensor) -> None:
        if "lpips" in self.metrics and preds.shape[0] >= 2:
            S = preds.shape[0] // 2 * 2
            a, b = preds[0:S:2].flatten(0, 1), preds[1:S:2].flatten(0, 1)
            d = self.lpips(a, b).view(S // 2, -1, preds.shape[2]).sum(0)
            self.pair_lpips = d if self.pair_lpips is None else self.pair_lpips + d
            self.pairs += S // 2

    def diversity(self) -> dict[str, torch.Tensor]:
        """With N >= 2 samples: `pixel_std` [B, T], the per-pixel standard deviation over the samples (ddof 1)
        averaged over pixels and channels, and (when the protocol has LPIPS) `lpips_diversity`, the mean LPIPS
        between samples 2k and 2k+1, an unbiased estimate of the mean pairwise LPIPS. Empty for one sample."""
        n = self.count
        if n < 2:
            return {}
        var = (self.pixel_sq.double() - self.pixel_sum.double().square() / n).clamp_min(0) / (n - 1)
        out = {"pixel_std": var.sqrt().mean(dim=(2, 3, 4))}
        if self.pair_lpips is not None:
            out["lpips_diversity"] = self.pair_lpips / self.pairs
        return out

    def rows(self, keys: list[str]) -> list[dict]:
        """One row per video: {key, METRIC, METRIC_mean, baseline_METRIC, motion_psnr, baseline_motion_psnr,
        [pixel_std, lpips_diversity]}, each a per-frame list of floats."""
        baseline = metrics.copy_last_frame(self.past, self.future.shape[1])
        values = {}
        for name, base in self.frame_scores(baseline, metrics.squared_error(baseline, self.future64)).items():
            values[name], values[f"{name}_mean"] = self.best[name], self.sums[name] / self.count
            values[f"baseline_{name}"] = base
        values["motion_psnr"] = self.motion
        values["baseline_motion_psnr"] = metrics.masked_psnr(baseline, self.future, self.moving)
        values.update(self.diversity())
        values = {k: v.double().cpu() for k, v in values.items()}
        return [{"key": key, **{k: v[b].tolist() for k, v in values.items()}} for b, key in enumerate(keys)]
