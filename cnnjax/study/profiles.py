"""Performance profiles and the benchmark score of a time-to-target benchmark.

The definitions are AlgoPerf's (Dahl et al. 2023, "Benchmarking Neural Network Training
Algorithms", section 4.5), after Dolan & Moré 2002. For submissions ``s`` (optimizers,
training algorithms) and workloads ``w``, with ``t[s][w]`` the time (seconds or steps)
``s`` needed to reach ``w``'s target (``math.inf`` when it never did):

* the ratio ``r[s][w] = t[s][w] / min over s' of t[s'][w]`` (1 for the fastest);
* the performance profile ``rho_s(tau)``: the fraction of workloads with
  ``r[s][w] <= tau``, a right-continuous step function of ``tau``;
* the benchmark score ``B_s = 1 / (r_max - 1) * integral from 1 to r_max of rho_s``
  (AlgoPerf's normalisation, ``r_max = 4``): 1 for a submission fastest everywhere, 0
  for one that never comes within ``r_max`` of the fastest.

Because ``rho_s`` is a step function, the integral is a finite sum: a workload with ratio
``r <= r_max`` adds ``(r_max - r) / |W|`` and any other nothing, so `benchmark_score`
computes it exactly rather than by quadrature. A workload no submission reached has no
fastest time; it counts as not reached for everyone (the ratio is ``inf``), so it lowers
every score alike.

Example (two submissions, two workloads; hand-checkable):
  >>> times = {"a": {"w1": 10.0, "w2": 30.0}, "b": {"w1": 20.0, "w2": 15.0}}
  >>> {s: p.tolist() for s, p in performance_profiles(times, taus=[1.0, 1.5, 2.0]).items()}
  {'a': [0.5, 0.5, 1.0], 'b': [0.5, 0.5, 1.0]}
  >>> benchmark_score(times)  # each: ((4 - 1) + (4 - 2)) / 2 / 3
  {'a': 0.8333333333333334, 'b': 0.8333333333333334}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["benchmark_score", "performance_profiles", "ratios"]

Times = Mapping[str, Mapping[str, float]]


def ratios(times: Times) -> dict[str, dict[str, float]]:
  """``{submission: {workload: t / fastest t on that workload}}`` (``inf`` when not reached).

  Raises:
    ValueError: no submissions, submissions that do not cover the same workloads, or a
      time that is not a number > 0 (``math.inf`` allowed).
  """
  if not times:
    raise ValueError("times needs at least one submission, got none")
  workloads = {s: set(per) for s, per in times.items()}
  first = next(iter(workloads.values()))
  if not first or any(w != first for w in workloads.values()):
    raise ValueError("every submission needs a time for the same (non-empty) set of "
                     f"workloads; got {({s: sorted(w) for s, w in workloads.items()})}")
  for s, per in times.items():
    for w, t in per.items():
      if isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t) or t <= 0:
        raise ValueError(f"times[{s!r}][{w!r}]={t!r}: expected a number > 0 "
                         "(math.inf when the target was never reached)")
  fastest = {w: min(float(times[s][w]) for s in times) for w in first}
  return {s: {w: (float(t) / fastest[w] if math.isfinite(fastest[w]) else math.inf)
              for w, t in per.items()} for s, per in times.items()}


def performance_profiles(times: Times, *, taus: Sequence[float]) -> dict[str, np.ndarray]:
  """``{submission: rho_s(taus)}``, each a float64 array ``[len(taus)]``.

  ``rho_s(tau)`` is the fraction of workloads where ``s`` is within a factor ``tau`` of
  the fastest submission (see the module docstring).
  """
  taus = np.asarray(taus, np.float64)
  out = {}
  for s, per in ratios(times).items():
    r = np.asarray(list(per.values()), np.float64)
    out[s] = (r[None, :] <= taus[:, None]).mean(axis=1)
  return out


def benchmark_score(times: Times, *, max_ratio: float = 4.0) -> dict[str, float]:
  """``{submission: B_s}``: the profile's integral from 1 to ``max_ratio``, over
  ``max_ratio - 1`` (exact: the profile is a step function).

  Raises:
    ValueError: ``max_ratio <= 1``, or bad ``times`` (see `ratios`).
  """
  if not max_ratio > 1:
    raise ValueError(f"max_ratio={max_ratio!r}: expected a number > 1 (AlgoPerf uses 4)")
  out = {}
  for s, per in ratios(times).items():
    gained = [max_ratio - r for r in per.values() if r <= max_ratio]
    out[s] = float(sum(gained) / len(per) / (max_ratio - 1))
  return out
