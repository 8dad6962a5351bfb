"""Fréchet distance between two sets of features (FVD's last step), from running float64 statistics.

Protocol: each set's mean mu and covariance S come from its features [N, D] in float64, and
    d = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).
The covariance divides by N - 1 by default (ddof=1), as TF-GAN's `frechet_classifier_distance_from_activations`,
which the original FVD code (google-research/frechet_video_distance) calls; StyleGAN-V's and cd-fvd's
`FeatureStats` divide by N (ddof=0). The trace terms of the two differ by a factor N / (N - 1) (0.4% at N = 256).

Matrix square root: with R = S_a^(1/2), S_a S_b and R S_b R have the same eigenvalues, so
tr((S_a S_b)^(1/2)) = sum of sqrt(eigenvalues of R S_b R), and both R and R S_b R are symmetric positive
semi-definite: two symmetric eigendecompositions (`numpy.linalg.eigh`, eigenvalues below 0 from rounding clipped
to 0) give it, in float64. This is TF-GAN's `trace_sqrt_product` (there with an SVD). It stays real and stable
when the covariances are singular, as they are whenever a set has fewer videos than the 400 I3D dimensions,
where `scipy.linalg.sqrtm` of the non-symmetric product S_a S_b (StyleGAN-V, cd-fvd) can return complex values.
Precision: relative 1e-12 for well-conditioned covariances; a zero eigenvalue comes out as +-1e-16 of the scale
and its square root as 1e-8, so a singular one is good to about 1e-8 of the scale (any square root shares this).
"""

from __future__ import annotations

import numpy as np
import torch

from toolkit.errors import ToolkitError


class FeatureStats:
    """Running statistics of features [N, D]: count, sum [D] and sum of outer products [D, D], in float64.

    Batches (`add`) and accumulators of other batches or ranks (`merge`, `to_list`/`from_list`) combine by
    adding the sums, so the statistics of a split set equal those of the whole set up to float64 rounding in the
    order of the additions (relative 1e-16 per addition; far below any printed digit of an FVD).
    """

    def __init__(self) -> None:
        self.count = 0
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    @property
    def dim(self) -> int | None:
        return None if self.sum is None else self.sum.shape[0]

    def _grow(self, dim: int) -> None:
        if self.sum is None:
            self.sum, self.outer = np.zeros(dim), np.zeros((dim, dim))
        elif dim != self.dim:
            raise ValueError(f"FeatureStats: features of dimension {dim} added to statistics of dimension {self.dim}")

    def add(self, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """Add features [N, D] (any float dtype and device; taken in float64). Returns self."""
        x = features.detach().to("cpu", torch.float64).numpy() if torch.is_tensor(features) \
            else np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"FeatureStats.add: need features [N, D], got shape {x.shape}")
        self._grow(x.shape[1])
        self.count += x.shape[0]
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another accumulator's statistics (another batch or rank). Returns self."""
        if other.sum is not None:
            self._grow(other.dim)
            self.count += other.count
            self.sum += other.sum
            self.outer += other.outer
        return self

    def to_list(self) -> list[float]:
        """A flat json-able list [count, D, sum (D), outer (D * D, row-major)]; floats round-trip exactly."""
        if self.sum is None:
            return [0.0, 0.0]
        return [float(self.count), float(self.dim), *self.sum.tolist(), *self.outer.ravel().tolist()]

    @classmethod
    def from_list(cls, values: list[float]) -> FeatureStats:
        """The accumulator `to_list` gave."""
        stats, (count, dim) = cls(), (int(values[0]), int(values[1]))
        if len(values) != 2 + dim + dim * dim:
            raise ValueError(f"FeatureStats.from_list: {len(values)} values do not hold statistics of dimension {dim}")
        if dim:
            stats.count = count
            stats.sum = np.array(values[2:2 + dim], dtype=np.float64)
            stats.outer = np.array(values[2 + dim:], dtype=np.float64).reshape(dim, dim)
        return stats

    def mean_cov(self, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and covariance [D, D] (divided by count - ddof), float64."""
        mu = self.sum / self.count
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - ddof)
        return mu, (cov + cov.T) / 2  # exactly symmetric for eigh; x.T @ x may differ in the last bit


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from rounding taken as 0)."""
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(s_a: np.ndarray, s_b: np.ndarray) -> float:
    """tr((S_a S_b)^(1/2)) of two covariances, as the eigenvalues of R S_b R, R = S_a^(1/2) (module docstring)."""
    r = _psd_sqrt(s_a)
    m = r @ s_b @ r
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_from_moments(mu_a: np.ndarray, s_a: np.ndarray, mu_b: np.ndarray, s_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b) - 2 tr((S_a S_b)^(1/2)), float64; clipped at 0 (rounding)."""
    d = float(np.square(mu_a - mu_b).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt_product(s_a, s_b))
    return max(d, 0.0)


def frechet_distance(a: FeatureStats, b: FeatureStats, ddof: int = 1) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (for I3D features: FVD; lower is
    better, 0 for identical statistics). ddof=1: covariance over N - 1 as the original FVD (TF-GAN); ddof=0:
    over N, as StyleGAN-V and cd-fvd. ToolkitError if a set has fewer than 2 items."""
    if min(a.count, b.count) < 2:
        raise ToolkitError(f"the Fréchet distance needs at least 2 items per set, got {a.count} and {b.count}")
    if a.dim != b.dim:
        raise ValueError(f"frechet_distance: feature dimensions differ ({a.dim} and {b.dim})")
    return frechet_from_moments(*a.mean_cov(ddof), *b.mean_cov(ddof))
