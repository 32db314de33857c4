"""Calibration and class-balance metrics: plain functions, and the same as summable statistics.

Two forms of each metric:

* **Functions** of ``probabilities [N, C]`` and integer ``labels [N]`` (numpy or jax
  arrays), for a whole set at once: `expected_calibration_error`,
  `adaptive_calibration_error`, `classwise_calibration_error`, `negative_log_likelihood`,
  `brier_score`, `per_class_accuracy`, `balanced_accuracy`.
* **Sums** (`calibration_sums`): per-bin counts, confidence sums and correct counts, and
  sums of the NLL and the Brier score, for every temperature of a fixed grid
  (`TEMPERATURES`). Batches, devices and hosts merge by adding them, and
  `calibration_metrics` turns merged sums into the metrics at one temperature. So
  temperature scaling needs no second pass over the data: `fit_temperature` picks the
  grid temperature with the lowest summed NLL (of the validation split), and the test
  metrics at that temperature are already in the test sums.

Binning follows Guo et al. 2017's reference code: 15 equal-width bins of the
confidence with edges ``linspace(0, 1, 16)`` (float32), bin ``b`` holding
``lo_b < conf <= hi_b``; ``ECE = sum_b (n_b / N) |acc_b - conf_b|``. A value of exactly
0 (possible only for the per-class probabilities of the classwise ECE) goes to the first
bin. The adaptive ECE uses equal-mass bins: the function follows Mukhoti et al.'s
``AdaptiveECELoss`` exactly; the summed form approximates its bins by merging
`ADAPTIVE_SUBBINS` fine bins of the confidence's log-odds (each fine bin goes whole to
one equal-mass bin).

    >>> p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    >>> y = np.array([0, 1, 1])
    >>> round(float(expected_calibration_error(p, y, num_bins=2)), 4)  # |2/3 - 0.7333|
    0.0667
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NUM_BINS = 15
# Temperatures 10^(k/10), k = -20..15: 0.01 .. 31.6 in steps of 26%, with 1 exactly (the
# NLL is flat near its minimum: a grid point within 13% of the best T costs little).
TEMPERATURES = 10.0 ** (np.arange(-20, 16) / 10.0)
IDENTITY = 20  # TEMPERATURES[IDENTITY] == 1.0
# Fine bins of the confidence's log-odds log(conf / (1 - conf)) for the summed adaptive
# ECE: 500 bins over [-5, 20] (conf from 0.0067 to 1 - 2e-9; beyond, the end bins).
ADAPTIVE_SUBBINS = 500
ADAPTIVE_LOG_ODDS = (-5.0, 20.0)


def _edges(num_bins: int) -> jax.Array:
  return jnp.linspace(0.0, 1.0, num_bins + 1, dtype=jnp.float32)


def bin_index(values: jax.Array, num_bins: int = NUM_BINS) -> jax.Array:
  """The (lo, hi] bin of each value in [0, 1]: the number of inner edges below it.

  Examples:
    >>> bin_index(jnp.array([0.0, 0.5, 0.5001, 1.0]), 2).tolist()
    [0, 0, 1, 1]
  """
  inner = _edges(num_bins)[1:-1]
  return jnp.sum(jnp.asarray(values, jnp.float32)[..., None] > inner, axis=-1)


def _ece_terms(count, confidence_sum, correct_sum, total):
  """``sum_b |correct_b - confidence_b| / N`` from per-bin sums (any leading axes)."""
  return jnp.sum(jnp.abs(correct_sum - confidence_sum), axis=-1) / jnp.maximum(total, 1.0)


def _binned(values, hits, num_bins):
  index = bin_index(values, num_bins)
  one_hot = jax.nn.one_hot(index, num_bins, dtype=jnp.float32)
  return (jnp.sum(one_hot, 0), jnp.sum(one_hot * values[:, None], 0),
          jnp.sum(one_hot * hits[:, None], 0))


def expected_calibration_error(probabilities, labels, *, num_bins: int = NUM_BINS) -> jax.Array:
  """ECE of the top-label confidence, equal-width bins (lo, hi] (Guo et al. 2017).

  Args:
    probabilities: ``[N, C]`` predicted class probabilities.
    labels: ``[N]`` integer labels.
    num_bins: number of equal-width bins.

  Returns:
    A scalar in [0, 1].

  References:
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017;
    Naeini et al., AAAI 2015.
  """
  p = jnp.asarray(probabilities, jnp.float32)
  confidence = jnp.max(p, -1)
  correct = (jnp.argmax(p, -1) == jnp.asarray(labels)).astype(jnp.float32)
  count, conf_sum, correct_sum = _binned(confidence, correct, num_bins)
  return _ece_terms(count, conf_sum, correct_sum, p.shape[0])


def classwise_calibration_error(probabilities, labels, *,
                                num_bins: int = NUM_BINS) -> jax.Array:
  """Classwise ECE: the mean over classes of the ECE of ``p_c`` against ``[y == c]``.

  ``(1 / C) sum_c sum_b (n_cb / N) |freq_cb - conf_cb|`` with every example binned by
  its ``p_c`` (Kull et al. 2019; the "static calibration error" of Nixon et al. 2019).

  Examples:
    >>> p = np.array([[0.9, 0.1], [0.6, 0.4]])
    >>> float(classwise_calibration_error(p, np.array([0, 1]), num_bins=2))
    0.25
  """
  p = jnp.asarray(probabilities, jnp.float32)
  hits = jax.nn.one_hot(jnp.asarray(labels), p.shape[-1], dtype=jnp.float32)
  per_class = [_ece_terms(*_binned(p[:, c], hits[:, c], num_bins), p.shape[0])
               for c in range(p.shape[-1])]
  return jnp.mean(jnp.stack(per_class))


def adaptive_calibration_error(probabilities, labels, *, num_bins: int = NUM_BINS) -> float:
  """Adaptive ECE: equal-mass bins of the top-label confidence, as Mukhoti et al.'s code.

  Edges ``np.interp(linspace(0, N, B + 1), arange(N), sort(conf))``, bins (lo, hi] (so,
  as in that code, the single lowest confidence falls in no bin). Host numpy.

  References:
    Nixon et al., "Measuring Calibration in Deep Learning", CVPR workshops 2019;
    Mukhoti et al., NeurIPS 2020 (code: github.com/torrvision/focal_calibration).
  """
  p = np.asarray(probabilities, np.float32)
  confidence = p.max(-1)
  correct = (p.argmax(-1) == np.asarray(labels)).astype(np.float64)
  n = len(confidence)
  edges = np.interp(np.linspace(0, n, num_bins + 1), np.arange(n), np.sort(confidence))
  total = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (confidence > lo) & (confidence <= hi)
    if in_bin.any():
      total += abs(correct[in_bin].sum() - confidence[in_bin].astype(np.float64).sum())
  return total / n


def negative_log_likelihood(probabilities, labels) -> jax.Array:
  """Mean ``-log p_y`` (probabilities clipped at float32's smallest normal)."""
  p = jnp.asarray(probabilities, jnp.float32)
  p_y = jnp.take_along_axis(p, jnp.asarray(labels)[:, None], axis=-1)[:, 0]
  return -jnp.mean(jnp.log(jnp.maximum(p_y, jnp.finfo(jnp.float32).tiny)))


def brier_score(probabilities, labels) -> jax.Array:
  """Mean over examples of ``sum_c (p_c - [y == c])^2`` (Brier 1950), in [0, 2]."""
  p = jnp.asarray(probabilities, jnp.float32)
  t = jax.nn.one_hot(jnp.asarray(labels), p.shape[-1], dtype=jnp.float32)
  return jnp.mean(jnp.sum(jnp.square(p - t), -1))


def per_class_accuracy(confusion) -> np.ndarray:
  """``diag / row sums`` of a confusion matrix (rows: true class); NaN for absent classes.

  Examples:
    >>> per_class_accuracy(np.array([[3, 1], [0, 2]])).tolist()
    [0.75, 1.0]
  """
  confusion = np.asarray(confusion, np.float64)
  rows = confusion.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(rows > 0, np.diag(confusion) / rows, np.nan)


def balanced_accuracy(confusion) -> float:
  """The mean of `per_class_accuracy` over the classes present (sklearn's definition)."""
  per_class = per_class_accuracy(confusion)
  return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")


# ----------------------------------------------------------------- summable statistics


def _log_odds_of_confidence(log_p: jax.Array) -> jax.Array:
  """``log(conf / (1 - conf))`` of the top class, stable for any logits."""
  top = jnp.argmax(log_p, -1)
  log_conf = jnp.max(log_p, -1)
  others = jnp.where(jax.nn.one_hot(top, log_p.shape[-1], dtype=bool), -jnp.inf, log_p)
  return log_conf - jax.nn.logsumexp(others, axis=-1)


def _segment_sums(index, values: dict[str, jax.Array], num_segments: int, leading: int):
  """Per-(row, bin) sums of ``values`` ``[T, ...]`` keyed by ``index`` ``[T, ...]``."""
  offsets = jnp.arange(leading).reshape((leading,) + (1,) * (index.ndim - 1)) * num_segments
  flat = (index + offsets).ravel()
  return {k: jax.ops.segment_sum(v.ravel(), flat, num_segments=leading * num_segments
                                 ).reshape(leading, num_segments) for k, v in values.items()}


def calibration_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array, *,
                     temperatures=TEMPERATURES, num_bins: int = NUM_BINS) -> dict[str, jax.Array]:
  """Summable calibration statistics of one batch, for every temperature.

  Args:
    logits: ``[B, C]``.
    labels: ``[B]`` integer labels.
    mask: ``[B]``, 1 for real examples, 0 for padding (ignored exactly).
    temperatures: ``[T]`` temperatures (``softmax(logits / T)``).
    num_bins: equal-width bins of the ECEs.

  Returns:
    ``nll``, ``brier`` ``[T]``; ``ece_count``, ``ece_confidence``, ``ece_correct``
    ``[T, bins]``; ``classwise_count``, ``classwise_probability``, ``classwise_hits``
    ``[T, C * bins]``; ``adaptive_count``, ``adaptive_confidence``, ``adaptive_correct``
    ``[T, ADAPTIVE_SUBBINS]``.
  """
  temps = jnp.asarray(temperatures, jnp.float32)
  n_t, c = temps.shape[0], logits.shape[-1]
  valid = (mask > 0)[None, :]
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32)[None] / temps[:, None, None], -1)
  p = jnp.exp(log_p)
  onehot = jax.nn.one_hot(labels, c, dtype=jnp.float32)[None]
  zero = lambda v: jnp.where(valid.reshape(valid.shape + (1,) * (v.ndim - 2)), v, 0.0)
  confidence = jnp.max(p, -1)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)[None] * jnp.ones((n_t, 1))
  sums = {"nll": -jnp.sum(zero(jnp.sum(onehot * log_p, -1)), -1),
          "brier": jnp.sum(zero(jnp.sum(jnp.square(p - onehot), -1)), -1)}
  w = zero(jnp.ones_like(confidence))
  ece = _segment_sums(bin_index(confidence, num_bins), {
      "count": w, "confidence": zero(confidence), "correct": zero(correct)}, num_bins, n_t)
  per_class = bin_index(p, num_bins) + jnp.arange(c) * num_bins  # [T, B, C]
  classwise = _segment_sums(per_class, {
      "count": zero(jnp.ones_like(p)), "probability": zero(p),
      "hits": zero(jnp.broadcast_to(onehot, p.shape))}, c * num_bins, n_t)
  lo, hi = ADAPTIVE_LOG_ODDS
  odds = _log_odds_of_confidence(log_p)
  fine = jnp.clip(jnp.floor((odds - lo) / (hi - lo) * ADAPTIVE_SUBBINS), 0,
                  ADAPTIVE_SUBBINS - 1).astype(jnp.int32)
  adaptive = _segment_sums(fine, {"count": w, "confidence": zero(confidence),
                                  "correct": zero(correct)}, ADAPTIVE_SUBBINS, n_t)
  sums.update({f"ece_{k}": v for k, v in ece.items()})
  sums.update({f"classwise_{k}": v for k, v in classwise.items()})
  sums.update({f"adaptive_{k}": v for k, v in adaptive.items()})
  return sums


def _adaptive_from_fine(count, confidence, correct, num_bins: int) -> float:
  """Equal-mass ECE from fine-bin sums: fine bins go whole to bins by their mid rank."""
  total = count.sum()
  if total <= 0:
    return float("nan")
  mid_rank = np.cumsum(count) - count / 2.0
  target = np.minimum((mid_rank / total * num_bins).astype(int), num_bins - 1)
  merged = [np.bincount(target, weights=v, minlength=num_bins) for v in (confidence, correct)]
  return float(np.abs(merged[1] - merged[0]).sum() / total)


def calibration_metrics(sums: Mapping[str, Any], index: int = IDENTITY, *,
                        num_bins: int = NUM_BINS) -> dict[str, float]:
  """``nll``, ``brier``, ``ece``, ``adaptive_ece``, ``classwise_ece`` at temperature ``index``.

  ``sums`` are merged `calibration_sums` (host arrays).
  """
  s = {k: np.asarray(v, np.float64)[index] for k, v in sums.items()}
  n = s["ece_count"].sum()
  c = s["classwise_count"].size // num_bins
  classwise = np.abs(s["classwise_hits"] - s["classwise_probability"]).reshape(c, num_bins)
  return {"nll": float(s["nll"] / n), "brier": float(s["brier"] / n),
          "ece": float(np.abs(s["ece_correct"] - s["ece_confidence"]).sum() / n),
          "adaptive_ece": _adaptive_from_fine(s["adaptive_count"], s["adaptive_confidence"],
                                              s["adaptive_correct"], num_bins),
          "classwise_ece": float(classwise.sum(1).mean() / n)}


def fit_temperature(sums: Mapping[str, Any], temperatures=TEMPERATURES) -> float:
  """The grid temperature with the lowest summed NLL (ties: the one closest to 1)."""
  nll = np.asarray(sums["nll"], np.float64)
  distance = np.abs(np.log(np.asarray(temperatures, np.float64)))
  return float(np.asarray(temperatures)[np.lexsort((distance, nll))[0]])


def temperature_index(temperature: float, temperatures=TEMPERATURES) -> int:
  """The grid position of ``temperature`` (the nearest on a log scale)."""
  return int(np.argmin(np.abs(np.log(np.asarray(temperatures)) - np.log(temperature))))


def reliability(sums: Mapping[str, Any], index: int = IDENTITY) -> dict[str, list]:
  """Per equal-width bin at temperature ``index``: ``count``, mean ``confidence``, ``accuracy``."""
  count = np.asarray(sums["ece_count"], np.float64)[index]
  with np.errstate(invalid="ignore", divide="ignore"):
    conf = np.asarray(sums["ece_confidence"], np.float64)[index] / count
    acc = np.asarray(sums["ece_correct"], np.float64)[index] / count
  return {"count": count.tolist(), "confidence": conf.tolist(), "accuracy": acc.tolist()}
