"""Calibration metrics: functions against independent numpy re-derivations of the reference
code (Guo et al.'s ``_ECELoss``: bins ``(lo, hi]`` over ``linspace(0, 1, 16)``; Kull et
al.'s classwise ECE; Mukhoti et al.'s ``AdaptiveECELoss``), and the summable statistics
against the functions (batches and padding merged by addition), temperature scaling
against scipy's minimiser of the exact NLL.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from cnnjax import metrics

# Jitted (compiled once each), not op-by-op.
ECE = jax.jit(metrics.expected_calibration_error)
CLASSWISE = jax.jit(metrics.classwise_calibration_error)
NLL = jax.jit(metrics.negative_log_likelihood)
BRIER = jax.jit(metrics.brier_score)

N, C = 300, 4
rng = np.random.default_rng(3)
LOGITS = (rng.normal(size=(N, C)) * 3).astype(np.float32)
LABELS = np.where(rng.random(N) < 0.7, LOGITS.argmax(-1), rng.integers(0, C, N)).astype(np.int32)


def softmax(x, t=1.0):
  z = np.asarray(x, np.float64) / t
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def reference_ece(conf, hit, num_bins=15):
  """Guo et al.'s loop: for each bin, conf > lower and conf <= upper."""
  edges = np.linspace(0, 1, num_bins + 1, dtype=np.float32).astype(np.float64)
  total = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (conf > lo) & (conf <= hi)
    if lo == 0:
      in_bin |= conf == 0  # cnnjax puts an exact 0 in the first bin (only p_c can be 0)
    if in_bin.any():
      total += in_bin.mean() * abs(hit[in_bin].mean() - conf[in_bin].mean())
  return total


def test_ece_classwise_nll_brier_match_reference_loops():
  p = softmax(LOGITS).astype(np.float32)
  conf, hit = p.max(-1).astype(np.float64), (p.argmax(-1) == LABELS).astype(np.float64)
  np.testing.assert_allclose(ECE(p, LABELS), reference_ece(conf, hit), rtol=1e-5)
  classwise = np.mean([reference_ece(p[:, c].astype(np.float64), (LABELS == c) * 1.0)
                       for c in range(C)])
  np.testing.assert_allclose(CLASSWISE(p, LABELS), classwise, rtol=1e-5)
  np.testing.assert_allclose(NLL(p, LABELS), -np.log(p[np.arange(N), LABELS]).mean(), rtol=1e-5)
  np.testing.assert_allclose(BRIER(p, LABELS), ((p - np.eye(C)[LABELS]) ** 2).sum(-1).mean(),
                             rtol=1e-5)
  # A confidence exactly on an edge belongs to the lower bin, (lo, hi].
  edge = np.array([[0.6, 0.4], [0.6, 0.4]], np.float32)
  assert metrics.bin_index(edge[:, 0], 5).tolist() == [2, 2]


def test_adaptive_ece_by_hand():
  # 4 examples, 2 bins. Edges interp([0, 2, 4], [0..3], sort(conf)) = [0.6, 0.8, 0.9]:
  # the lowest confidence (0.6) is in no bin, as in the reference code; bin 1 holds 0.7, 0.8
  # (both right: |2 - 1.5|), bin 2 holds 0.9 (wrong: |0 - 0.9|); (0.5 + 0.9) / 4 = 0.35.
  p = np.array([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]], np.float32)
  y = np.array([0, 1, 0, 0])
  assert metrics.adaptive_calibration_error(p, y, num_bins=2) == pytest.approx(0.35, abs=1e-6)


def batched_sums(logits, labels, batch=128):
  """calibration_sums over padded fixed-size batches, added up (as evaluation does)."""
  fn = jax.jit(metrics.calibration_sums)
  total = None
  for start in range(0, len(logits), batch):
    x = np.zeros((batch, C), np.float32)
    y = np.zeros((batch,), np.int32)
    mask = np.zeros((batch,), np.float32)
    part = slice(start, min(start + batch, len(logits)))
    n = part.stop - part.start
    x[:n], y[:n], mask[:n] = logits[part], labels[part], 1.0
    x[n:] = np.nan  # padding must not leak into the sums
    sums = fn(x, y, mask)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  return jax.device_get(total)


@pytest.fixture(scope="module")
def sums():
  return batched_sums(LOGITS, LABELS)


def test_summed_statistics_equal_the_functions_at_every_temperature(sums):
  # (At very small T the float32 probabilities underflow; the sums use log-softmax.)
  for index in (metrics.IDENTITY, 14, 30):
    t = metrics.TEMPERATURES[index]
    p = softmax(LOGITS, t).astype(np.float32)
    got = metrics.calibration_metrics(sums, index)
    np.testing.assert_allclose(got["ece"], ECE(p, LABELS), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got["classwise_ece"], CLASSWISE(p, LABELS), rtol=1e-4)
    np.testing.assert_allclose(got["nll"], NLL(p, LABELS), rtol=1e-4)
    np.testing.assert_allclose(got["brier"], BRIER(p, LABELS), rtol=1e-4)
    # Equal-mass bins from 500 fine bins: close to the exact adaptive ECE, not equal.
    assert abs(got["adaptive_ece"] - metrics.adaptive_calibration_error(p, LABELS)) < 0.02
  assert metrics.TEMPERATURES[metrics.IDENTITY] == 1.0
  rel = metrics.reliability(sums)
  assert sum(rel["count"]) == N


def test_fitted_temperature_is_the_grid_point_nearest_the_nll_minimum(sums):
  t_grid = metrics.fit_temperature(sums)

  def nll(log_t):
    z = LOGITS.astype(np.float64) / np.exp(log_t)
    log_p = z - z.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    return -log_p[np.arange(N), LABELS].mean()

  best = np.exp(optimize.minimize_scalar(nll, bounds=(-4, 3), method="bounded").x)
  # The grid steps by 10^0.1 (26%): the chosen point is within one step of the optimum,
  # and no grid point has a lower NLL.
  assert abs(np.log10(t_grid) - np.log10(best)) <= 0.1
  assert nll(np.log(t_grid)) <= min(nll(np.log(t)) for t in metrics.TEMPERATURES) + 1e-12
  assert metrics.temperature_index(t_grid) == int(np.argmin(np.asarray(sums["nll"])))
