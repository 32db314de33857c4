"""Hyperparameter search spaces, quasirandom trials and the expected best-of-k curve.

A *search space* maps config keys to ranges: ``{"optimizer.learning_rate": (1e-4, 1e-1,
"log")}``; `quasirandom_points` draws points from a scrambled Halton sequence
(`scipy.stats.qmc.Halton`), the quasirandom search AlgoPerf's tuning rules prescribe
(Dahl et al. 2023, after Bousquet et al. 2017): more even coverage than independent
draws for the same number of trials, and seeded.

Only the learning rate is a *value* of a compiled step (`cnnjax.training.build`): trials
that differ only in it share one program. Every other key (weight decay, b1, warmup) is
part of the optimizer's structure, so each distinct point compiles its own step; the
default spaces (`DEFAULT_SPACES`) therefore search the learning rate alone, and wider
spaces are one config entry away.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import qmc

__all__ = ["DEFAULT_SPACES", "expected_best_of_k", "quasirandom_points", "space_for"]

Space = Mapping[str, tuple[float, float, str]]

# Learning-rate ranges: two decades, log-uniform, with each optimizer's own default rate
# (`cnnjax.optimizers.default_learning_rate`) a decade from either end.
def _around(default: float) -> Space:
  return {"optimizer.learning_rate": (default / 10, default * 10, "log")}


DEFAULT_SPACES: dict[str, Space] = {
    name: _around(rate) for name, rate in {
        "sgd": 0.01, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.01, "rmsprop": 1e-3,
        "adam": 1e-3, "adamw": 1e-3, "adamax": 2e-3, "nadam": 1e-3, "nadamw": 1e-3,
        "radam": 1e-3, "lamb": 1e-3, "lars": 0.1, "lion": 1e-4, "adabelief": 1e-3,
        "adafactor": 0.01, "yogi": 0.01, "novograd": 1e-3}.items()}
_SCALES = ("log", "linear")


def space_for(optimizer: str, overrides: Mapping[str, Any] | None = None) -> dict:
  """The search space of ``optimizer``: ``overrides[optimizer]`` if given, else its default.

  Raises:
    ValueError: no default space for ``optimizer``, or a malformed range.
  """
  overrides = overrides or {}
  if optimizer in overrides:
    space = dict(overrides[optimizer])
  elif optimizer in DEFAULT_SPACES:
    space = dict(DEFAULT_SPACES[optimizer])
  else:
    raise ValueError(f"no search space for optimizer {optimizer!r}; give one in the "
                     f"config's search_spaces, or use one of {sorted(DEFAULT_SPACES)}")
  for key, rng in space.items():
    ok = (isinstance(rng, (tuple, list)) and len(rng) == 3 and rng[2] in _SCALES
          and all(isinstance(x, (int, float)) for x in rng[:2]) and rng[0] < rng[1]
          and (rng[2] != "log" or rng[0] > 0))
    if not ok:
      raise ValueError(f"search space {optimizer}.{key}={rng!r}: expected (low, high, "
                       f"scale) with low < high and scale one of {list(_SCALES)} (log: low > 0)")
  return space


def quasirandom_points(space: Space, n: int, *, seed: int) -> list[dict[str, float]]:
  """``n`` points of ``space`` from a scrambled Halton sequence seeded with ``seed``.

  Example:
    >>> pts = quasirandom_points({"optimizer.learning_rate": (1e-4, 1e-1, "log")}, 4, seed=0)
    >>> len(pts), all(1e-4 <= p["optimizer.learning_rate"] <= 1e-1 for p in pts)
    (4, True)
  """
  if n < 1:
    raise ValueError(f"number of trials {n!r}: expected >= 1")
  keys = sorted(space)
  unit = qmc.Halton(d=len(keys), scramble=True, seed=seed).random(n)
  points = []
  for row in unit:
    point = {}
    for key, u in zip(keys, row):
      low, high, scale = space[key]
      value = (math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
               if scale == "log" else low + u * (high - low))
      point[key] = float(value)
    points.append(point)
  return points


def expected_best_of_k(values: Sequence[float], ks: Sequence[int], *, goal: str = "max",
                       resamples: int = 2000, seed: int = 0, band: float = 0.9
                       ) -> dict[str, np.ndarray]:
  """The best of k trials drawn (with replacement) from ``values``, by bootstrap.

  For each k: ``resamples`` draws of k values, the best of each (max or min by
  ``goal``); returns ``{"k", "mean", "low", "high"}`` with the central ``band`` of the
  draws as [low, high] (DeepOBS/Dodge et al. 2019's expected validation performance).
  """
  v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
  ks = np.asarray(ks, int)
  if v.size == 0:
    nan = np.full(ks.shape, np.nan)
    return {"k": ks, "mean": nan, "low": nan, "high": nan}
  rng = np.random.default_rng(seed)
  best = np.max if goal == "max" else np.min
  mean, low, high = [], [], []
  for k in ks:
    draws = best(rng.choice(v, size=(resamples, int(k)), replace=True), axis=1)
    mean.append(draws.mean())
    low.append(np.quantile(draws, (1 - band) / 2))
    high.append(np.quantile(draws, 1 - (1 - band) / 2))
  return {"k": ks, "mean": np.asarray(mean), "low": np.asarray(low), "high": np.asarray(high)}
