"""The Fréchet distance between two Gaussians fitted to feature vectors (host numpy).

``FD = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1^(1/2) S_2 S_1^(1/2))^(1/2))``
(Fréchet 1957; Dowson & Landau 1982), the squared 2-Wasserstein distance between
``N(mu_1, S_1)`` and ``N(mu_2, S_2)``: the "FID" of Heusel et al. 2017 when the features
are Inception-v3's. ``tr((S_1 S_2)^(1/2))`` is computed as the trace of the square root of
the symmetric ``S_1^(1/2) S_2 S_1^(1/2)`` (a similar matrix, so the same eigenvalues) by
two symmetric eigendecompositions in float64; tiny negative eigenvalues from rounding
are clipped to 0. This is exact for singular covariances too (fewer samples than
feature dimensions), where ``scipy.linalg.sqrtm(S_1 @ S_2)`` needs a regularising offset.

The Gaussians come from summable statistics (count, sum, sum of outer products), so
they can be accumulated batch by batch on devices (`gaussian_from_sums`).
"""

from __future__ import annotations

import numpy as np


def gaussian_from_sums(count, total, outer) -> tuple[np.ndarray, np.ndarray]:
  """``(mean [d], covariance [d, d])`` (sample covariance, ddof=1) from ``n``, ``sum_i f_i``
  and ``sum_i f_i f_i^T``.

  Examples:
    >>> f = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])
    >>> mean, cov = gaussian_from_sums(3, f.sum(0), f.T @ f)
    >>> mean.tolist(), bool(np.allclose(cov, np.cov(f, rowvar=False)))
    ([3.0, 4.0], True)
  """
  n = float(np.asarray(count))
  if n < 2:
    raise ValueError(f"a covariance needs at least 2 feature vectors, got {n:g}")
  mean = np.asarray(total, np.float64) / n
  cov = (np.asarray(outer, np.float64) - n * np.outer(mean, mean)) / (n - 1.0)
  return mean, (cov + cov.T) / 2.0


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((a + a.T) / 2.0)
  return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                     cov2: np.ndarray) -> float:
  """The Fréchet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``.

  Examples:
    >>> i = np.eye(2)
    >>> frechet_distance(np.zeros(2), i, np.array([3.0, 4.0]), 4 * i)  # 25 + 2 + 8 - 2*4
    27.0
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
    raise ValueError(f"shapes do not match: means {mu1.shape} {mu2.shape}, covariances "
                     f"{cov1.shape} {cov2.shape}")
  root = _psd_sqrt(cov1)
  cross = np.linalg.eigvalsh(root @ cov2 @ root)
  trace_sqrt = float(np.sum(np.sqrt(np.maximum(cross, 0.0))))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)
