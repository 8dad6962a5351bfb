"""Per-sequence video prediction metrics (batched torch): PSNR, SSIM, motion-region PSNR, copy-last-frame
baseline, best of N.

Evaluation protocol: the model sees frames 0..n_past-1 of the first n_past+n_future frames of each sequence and
is scored on frames n_past..n_past+n_future-1; per-frame values are averaged over the whole evaluation set. The
functions here only compute per-sequence, per-frame values [B, T]; the trainer/evaluator gathers them across
batches and processes. PSNR and SSIM follow the lab's `finn_eval_seq` (`finn_psnr`, `finn_ssim`): computed per
channel, then averaged over channels.
"""

from __future__ import annotations

import math

import torch

MSE_FLOOR = 1e-10
"""PSNR clamps the per-channel MSE at this value: identical frames give 20 log10(range) + 100 dB."""


def _check(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(f"{name}: need pred and target [B, T, C, H, W] of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")


def squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(pred - target)^2 [B, T, C, H, W] in float64 (exact for float32 inputs): what `psnr_of` and
    `masked_psnr_of` read, computed once when both are wanted."""
    _check(pred, target, "squared_error")
    return (pred.double() - target.double()).square_()


def psnr_of(sq: torch.Tensor, data_range: float = 1.0, per_channel: bool = True) -> torch.Tensor:
    """`psnr` from the squared error [B, T, C, H, W] (float64) -> [B, T] float64."""
    mse = sq.mean(dim=(3, 4) if per_channel else (2, 3, 4)).clamp_min(MSE_FLOOR)
    value = 20 * math.log10(data_range) - 10 * torch.log10(mse)
    return value.mean(dim=2) if per_channel else value


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, per_channel: bool = True) -> torch.Tensor:
    """PSNR [B, T] (float64) of frames [B, T, C, H, W]: per channel 20 log10(range) - 10 log10(mse_c), then
    averaged over channels, as `finn_psnr` (SVG's protocol); `per_channel=False`: one mse over all channels
    (piqa's PSNR, iVideoGPT's protocol). The mse is clamped at 1e-10, so identical frames give 100 dB (range 1)
    instead of infinity.
    """
    return psnr_of(squared_error(pred, target), data_range, per_channel)


def gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """A normalized 1-D Gaussian (float64)."""
    r = torch.arange(size, dtype=torch.float64) - (size // 2)
    g = torch.exp(-(r ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """[n - k + 1, n] matrix whose rows slide the 1-D kernel g: `band @ v` is the 'valid' correlation of v."""
    k = g.numel()
    m = g.new_zeros(n - k + 1, n)
    for i in range(n - k + 1):
        m[i, i:i + k] = g
    return m


def _valid_gaussian_blur(maps: torch.Tensor) -> torch.Tensor:
    """'valid' 11x11 Gaussian filtering of maps [N, H, W] -> [N, H-10, W-10], in the maps' dtype.

    fspecial_gauss is the outer product of two normalized 1-D Gaussians, so the 2-D filter is a row pass and a
    column pass; both are banded matrix products, which run on BLAS (a one-channel conv2d ran 15x slower than
    these products on a CPU). Equal to the 2-D convolution up to rounding.
    """
    g = gaussian_1d().to(maps.device, maps.dtype)
    return _band(maps.shape[1], g) @ maps @ _band(maps.shape[2], g).T


SSIM_DTYPE = torch.float32
"""SSIM's arithmetic: float32, 3.5x faster than float64 (`finn_ssim`'s: 255 against 896 ms for 16 videos x 28
frames on one CPU thread), whose SSIM it gives to 3e-7 per frame (the demo model's predictions, noisy and
unrelated frames). Each map is first shifted by its own mean (the variances and the covariance do not change),
so that sigma^2 = blur(x^2) - mu^2 does not cancel on flat bright regions: 2e-8 there, 1.4e-5 unshifted."""

SSIM_CHUNK = 1024
"""Channel maps per SSIM pass: bounds the intermediates to ~100 MB at 64x64."""

C1, C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
"""SSIM's stabilizers (K1 = 0.01, K2 = 0.03, data range L = 1)."""


def _centred_stats(m: torch.Tensor, other: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """For maps m [N, H, W] (`SSIM_DTYPE`): (m - its per-map mean c, blur(m) = mu, blur((m - c)^2) - blur(m - c)^2
    = sigma^2) and, given `other` (centred maps of the same shape), blur((m - c) * other)."""
    c = m.mean(dim=(1, 2), keepdim=True)
    d = m - c
    mu_d = _valid_gaussian_blur(d)
    var = _valid_gaussian_blur(d * d).sub_(mu_d * mu_d)
    return (d, mu_d + c, var, mu_d) + (() if other is None else (_valid_gaussian_blur(d * other),))


def ssim_reference(target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What SSIM needs of the ground truth alone, frames [B, T, C, H, W]: its maps centred (x - mean, [B*T*C,
    H, W]), the blurred centred maps mu1 - mean, mu1 and the two factors mu1^2 + C1 and sigma1^2 + C2
    ([B*T*C, H-10, W-10], `SSIM_DTYPE`). Made once per batch, it serves every sample's SSIM."""
    B, T, C, H, W = target.shape
    x = target.reshape(B * T * C, H, W).to(SSIM_DTYPE)
    parts = []
    for m in x.split(SSIM_CHUNK):
        d, mu1, var1, mu_d = _centred_stats(m)
        parts.append((d, mu_d, mu1, mu1 * mu1 + C1, var1 + C2))
    return tuple(torch.cat(p) for p in zip(*parts))


def ssim(pred: torch.Tensor, target: torch.Tensor, reference: tuple | None = None) -> torch.Tensor:
    """SSIM [B, T] (float64) of frames [B, T, C, H, W] in [0, 1], the lab's `finn_ssim` (to `SSIM_DTYPE`'s
    rounding: within 3e-7 of float64).

    11x11 Gaussian window (sigma 1.5), 'valid' convolution (no padding; the map is (H-10) x (W-10)), K1 = 0.01,
    K2 = 0.03, L = 1; the map is averaged per channel (a NaN channel counts as -1, as in `finn_eval_seq`), then
    over channels. Computed `SSIM_CHUNK` channel maps at a time; `reference`: `ssim_reference(target)`, when
    several predictions are scored against one target.
    """
    _check(pred, target, "ssim")
    B, T, C, H, W = pred.shape
    ref = reference if reference is not None else ssim_reference(target)
    y = pred.reshape(B * T * C, H, W).to(SSIM_DTYPE)
    per_channel = torch.cat([_ssim_maps(*(r[i:i + SSIM_CHUNK] for r in ref), y[i:i + SSIM_CHUNK])
                             for i in range(0, B * T * C, SSIM_CHUNK)]).view(B, T, C).double()
    per_channel = torch.where(torch.isnan(per_channel), torch.full_like(per_channel, -1.0), per_channel)
    return per_channel.mean(dim=2)


def _ssim_maps(dx: torch.Tensor, mu_dx: torch.Tensor, mu1: torch.Tensor, a1: torch.Tensor, b1: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each pair of maps x, y [N, H, W], given x's `ssim_reference` terms -> [N]:
    ((2 mu1 mu2 + C1)(2 sigma12 + C2)) / ((mu1^2 + mu2^2 + C1)(sigma1^2 + sigma2^2 + C2))."""
    _, mu2, var2, mu_dy, dxy = _centred_stats(y, dx)
    cov = dxy - mu_dx * mu_dy
    mu1_mu2 = mu1 * mu2
    num = (2 * mu1_mu2 + C1) * (2 * cov + C2)
    den = (a1 + mu2 * mu2) * (b1 + var2)
    return (num / den).mean(dim=(1, 2))


MOTION_THRESHOLD = 0.05
"""A pixel moves when some channel of the ground-truth frame differs from the last context frame's by more than
this (images in [0, 1]; 0.05 is about 13 of 255 levels, above png rounding and the worlds' flat shading)."""


def motion_mask(last: torch.Tensor, future: torch.Tensor, threshold: float = MOTION_THRESHOLD) -> torch.Tensor:
    """Where the future moves: last context frame last [B, C, H, W], ground truth future [B, T, C, H, W] ->
    bool [B, T, 1, H, W], true where any channel differs from the last context frame by more than threshold."""
    return ((future - last[:, None]).abs() > threshold).any(dim=2, keepdim=True)


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR [B, T] (float64) over the pixels of mask [B, T, 1, H, W] only: per channel 20 log10(range) -
    10 log10(mse_c), mse_c the mean squared error over the masked pixels (clamped as `psnr`), then averaged
    over channels. NaN for a frame whose mask is empty (nothing moved): averages skip it (`nanmean`)."""
    return masked_psnr_of(squared_error(pred, target), mask, data_range)


def masked_psnr_of(sq: torch.Tensor, mask: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """`masked_psnr` from the squared error [B, T, C, H, W] (float64) -> [B, T] float64."""
    m = mask.double()
    count = m.sum(dim=(3, 4))  # [B, T, 1]
    masked = (sq.flatten(3) @ m.flatten(3).transpose(2, 3))[..., 0]  # [B, T, C]: a sum of products, no temporary
    mse = (masked / count.clamp_min(1)).clamp_min(MSE_FLOOR)
    value = (20 * math.log10(data_range) - 10 * torch.log10(mse)).mean(dim=2)
    return torch.where(count[..., 0] > 0, value, torch.full_like(value, float("nan")))


def copy_last_frame(past: torch.Tensor, n_future: int) -> torch.Tensor:
    """Baseline prediction: the last context frame repeated, past [B, n_past, ...] -> [B, n_future, ...]."""
    return past[:, -1:].expand(past.shape[0], n_future, *past.shape[2:]).contiguous()


def best_of_n(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best of N samples per sequence: scores [N, B, T] (PSNR) -> (best [B, T], index [B]).

    For each sequence keeps the sample with the highest mean score over frames (ties: the lowest index); use
    `index` to pick the same sample's other metrics (e.g. SSIM).
    """
    if scores.dim() != 3:
        raise ValueError(f"best_of_n: need scores [N, B, T], got {tuple(scores.shape)}")
    index = scores.mean(dim=2).argmax(dim=0)
    best = scores.gather(0, index[None, :, None].expand(1, *scores.shape[1:]))[0]
    return best, index
