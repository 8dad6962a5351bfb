"""Summaries over seeds: mean, sample standard deviation and the Student-t 95% confidence interval."""

from __future__ import annotations

import math

_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
"""Two-sided 95% quantiles t_{0.975, df} for df = 1..30."""


def t95(df: int) -> float:
    """t_{0.975, df}: the table for df <= 30, the Cornish-Fisher expansion (error < 1e-4) above."""
    if df < 1:
        raise ValueError(f"t95: df must be >= 1, got {df}")
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with n - 1; nan for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def mean_ci95(values: list[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95% Student-t confidence interval of the mean (nan for n < 2), n)."""
    mean, std = mean_std(values)
    n = len(values)
    half = t95(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return mean, half, n
