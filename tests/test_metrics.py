"""Metrics: hand-computed PSNR, SSIM against a numpy port of the lab's finn_ssim, baselines, best of N."""

import math

import numpy as np
import pytest
import torch

from toolkit.eval.metrics import best_of_n, copy_last_frame, masked_psnr, motion_mask, psnr, ssim
from toolkit.eval.summary import summarize


def test_psnr_hand_computed():
    # One 1x2-pixel frame with 2 channels, target all zeros.
    # channel 0: pred [0.1, 0.3] -> mse = (0.01 + 0.09) / 2 = 0.05 -> psnr = -10 log10(0.05) = 13.0103 dB
    # channel 1: pred [0.2, 0.2] -> mse = (0.04 + 0.04) / 2 = 0.04 -> psnr = -10 log10(0.04) = 13.9794 dB
    # mean over channels = -5 log10(0.05 * 0.04) = -5 log10(0.002) = 13.494850021680094 dB
    pred = torch.tensor([0.1, 0.3, 0.2, 0.2]).view(1, 1, 2, 1, 2)
    target = torch.zeros_like(pred)
    value = psnr(pred, target)
    assert value.shape == (1, 1)
    assert value.item() == pytest.approx(13.494850021680094, abs=1e-6)
    # data_range 2 adds 20 log10(2) = 6.020599913279624 dB
    assert psnr(pred, target, data_range=2.0).item() == pytest.approx(13.494850021680094 + 6.020599913279624, abs=1e-6)


def test_psnr_identical_is_100_db_and_batched():
    target = torch.rand(2, 3, 3, 8, 8)
    assert torch.allclose(psnr(target, target), torch.full((2, 3), 100.0, dtype=torch.float64))
    pred = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    out = psnr(pred, target)
    assert out.shape == (2, 3)
    b, t = 1, 2  # per-channel formula for one element, computed directly
    mse_c = ((pred[b, t].double() - target[b, t].double()) ** 2).mean(dim=(1, 2))
    assert out[b, t].item() == pytest.approx((-10 * torch.log10(mse_c)).mean().item(), abs=1e-9)


def _fspecial_gauss(size, sigma):
    x, y = np.mgrid[-size // 2 + 1:size // 2 + 1, -size // 2 + 1:size // 2 + 1]
    g = np.exp(-((x ** 2 + y ** 2) / (2.0 * sigma ** 2)))
    return g / g.sum()


def _conv_valid(img, window):
    """scipy.signal.fftconvolve(img, window, mode='valid') done directly: a true convolution (flipped kernel)."""
    k = window[::-1, ::-1]
    patches = np.lib.stride_tricks.sliding_window_view(img, k.shape)
    return np.einsum("ijkl,kl->ij", patches, k)


def _finn_ssim(img1, img2):
    """The lab's finn_ssim, with the valid convolution above instead of scipy."""
    img1, img2 = img1.astype(np.float64), img2.astype(np.float64)
    window = _fspecial_gauss(11, 1.5)
    C1, C2 = (0.01 * 1) ** 2, (0.03 * 1) ** 2
    mu1, mu2 = _conv_valid(img1, window), _conv_valid(img2, window)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = _conv_valid(img1 * img1, window) - mu1_sq
    sigma2_sq = _conv_valid(img2 * img2, window) - mu2_sq
    sigma12 = _conv_valid(img1 * img2, window) - mu1_mu2
    return ((2 * mu1_mu2 + C1) * (2 * sigma12 + C2)) / ((mu1_sq + mu2_sq + C1) * (sigma1_sq + sigma2_sq + C2))


def test_ssim_identical_is_one():
    x = torch.rand(2, 2, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2, 2, dtype=torch.float64), atol=1e-6)  # float32 arithmetic


def test_ssim_matches_numpy_finn_ssim():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 3, 20, 18, generator=gen)
    pred = (target + 0.2 * torch.randn(target.shape, generator=gen)).clamp(0, 1)
    pred[1, 2] = torch.rand(3, 20, 18, generator=gen)  # an unrelated frame: low SSIM
    # flat frames (float32's worst case: sigma^2 = blur(x^2) - mu^2 cancels) with faint noise
    target[0, 1] = 0.8 + 0.001 * torch.randn(3, 20, 18, generator=gen)
    pred[0, 1] = (target[0, 1] + 0.005 * torch.randn(3, 20, 18, generator=gen)).clamp(0, 1)
    out = ssim(pred, target)
    assert out.shape == (2, 3)
    errors = []
    for b in range(2):
        for t in range(3):
            gt, pr = target[b, t].numpy(), pred[b, t].numpy()
            expected = np.mean([_finn_ssim(gt[c], pr[c]).mean() for c in range(3)])  # finn_eval_seq
            errors.append(abs(out[b, t].item() - expected))
    assert max(errors) < 1e-6  # SSIM_DTYPE float32 on centred maps: 3e-7 at most on the demo model's predictions
    assert out[1, 2] < 0.2 < out[0, 0] < 1.0


def test_copy_last_frame():
    past = torch.rand(2, 3, 3, 4, 4)
    out = copy_last_frame(past, 5)
    assert out.shape == (2, 5, 3, 4, 4)
    for t in range(5):
        assert torch.equal(out[:, t], past[:, 2])
    out[0, 0] += 1  # a real tensor, not a view into past
    assert torch.equal(past[0, 2] + 1, out[0, 0])
    assert math.isclose(psnr(copy_last_frame(past, 1), past[:, 2:]).min().item(), 100.0)


def test_best_of_n():
    # 3 samples, 2 sequences, 2 frames: sequence 0 best is sample 2 (mean 25), sequence 1 best is sample 0 (mean 30)
    scores = torch.tensor([
        [[20.0, 20.0], [30.0, 30.0]],
        [[10.0, 35.0], [28.0, 29.0]],  # seq 0 mean 22.5 (highest single frame, not highest mean)
        [[24.0, 26.0], [10.0, 10.0]],
    ])
    best, index = best_of_n(scores)
    assert index.tolist() == [2, 0]
    assert best.tolist() == [[24.0, 26.0], [30.0, 30.0]]


def test_motion_region_psnr_counts_only_the_pixels_that_move():
    g = torch.Generator().manual_seed(0)
    last = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64) * 0.8 + 0.1  # no clamping below
    future = last[:, None].repeat(1, 3, 1, 1, 1)
    future[0, 0, 1, 2:4, 5] += 0.2  # two pixels of one channel move in frame 0 of sequence 0
    future[1, 1, :, 0, 0] -= 0.04  # below the threshold: not motion
    mask = motion_mask(last, future)
    assert mask.shape == (2, 3, 1, 8, 8) and mask.sum() == 2 and mask[0, 0, 0, 2:4, 5].all()
    pred = future + 0.01  # 0.01 off everywhere, 0.1 off on one of the moving pixels
    pred[0, 0, :, 2, 5] += 0.09
    value = masked_psnr(pred, future, mask)
    expected = np.mean([-10 * math.log10((0.1 ** 2 + 0.01 ** 2) / 2)] * 3)
    assert value[0, 0].item() == pytest.approx(expected, rel=1e-9)
    assert torch.isnan(value[0, 1:]).all() and torch.isnan(value[1]).all()  # nothing moved there
    full = torch.ones_like(mask)
    torch.testing.assert_close(masked_psnr(pred, future, full), psnr(pred, future), rtol=1e-12, atol=0)
    # averages leave the frames where nothing moved out instead of turning NaN
    rows = [{"key": f"k{b}", **{k: (value[b] if "motion" in k else torch.zeros(3)).tolist()
                                for k in ("psnr", "ssim", "psnr_mean", "ssim_mean", "baseline_psnr", "baseline_ssim",
                                          "motion_psnr", "baseline_motion_psnr")}} for b in range(2)]
    result = summarize(rows, 1)
    assert result.mean["motion_psnr"] == pytest.approx(expected, rel=1e-9)
    per_frame = result.per_frame["motion_psnr"]
    assert per_frame[0] == pytest.approx(expected) and math.isnan(per_frame[1])
