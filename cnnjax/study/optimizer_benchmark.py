"""Which optimizer, by the field's benchmark standard: time to a target over workloads.

The protocol follows AlgoPerf's external tuning ruleset (Dahl et al. 2023) at laptop
scale, with DeepOBS's (Schneider et al. 2019) seed bands and Schmidt et al. 2021's
"defaults of several optimizers vs one tuned" comparison:

1. A *workload* (`experiments/configs/workloads/`) is a run config (task, dataset, model,
   step budget) and a *target*: a value of the task's headline metric on the validation
   split, set from a reference run (median over seeds of its best validation value).
2. Per optimizer, ``studies`` tuning studies of ``trials`` trials each: the trial
   points are quasirandom (`cnnjax.study.tuning.quasirandom_points`, Halton seed
   ``qmc_seed + study``) in the optimizer's search space; trial ``k`` of study ``s``
   trains with seed ``s * trials + k``. A trial's *time* is the number of steps (or
   seconds, ``time_measure``) until its validation metric first reaches the target,
   checked at every validation (``eval_every_epochs``); ``inf`` if never.
3. A study's time is its fastest trial's; the optimizer's time on the workload is the
   median over its studies (AlgoPerf). Ties between trials that never reach the target
   go to the better best validation value.
4. Each study's best trial is re-run with ``seeds`` further seeds (``10_000 + s *
   seeds + i``): the final validation and test values with their spread.
5. Each optimizer also runs at its own default learning rate (``seeds`` seeds 0, 1, ...,
   no tuning): the "defaults" panel.

Times feed `cnnjax.study.profiles` (performance profiles, benchmark score). Nothing here
writes files; `cnnjax.study.benchmark_report` does.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from cnnjax import config as config_lib
from cnnjax.study import tuning
from cnnjax.study.grid import group_key
from cnnjax.study.report import _mean_std  # pylint: disable=protected-access

__all__ = ["Trial", "best_trial", "default_trials", "median_time", "rerun_trials", "run_config",
           "summarize", "train_all", "trial_time", "tuning_trials"]

TIME_MEASURES = ("steps", "seconds")
RERUN_SEED_BASE = 10_000


@dataclasses.dataclass(frozen=True)
class Trial:
  """One planned run of the benchmark.

  Attributes:
    workload, optimizer: what it measures.
    kind: "trial" (tuning), "rerun" (a study's best trial on a new seed), "default"
      (the optimizer's default learning rate) or "reference" (target setting).
    study, index: its study and its index in the study (-1 when not a tuning trial).
    seed: the run's seed.
    point: the hyperparameters set on the base (config key -> value).
    config: the validated run config.
  """
  workload: str
  optimizer: str
  kind: str
  study: int
  index: int
  seed: int
  point: Mapping[str, float]
  config: ml_collections.ConfigDict


def run_config(base: ml_collections.ConfigDict, optimizer: str, point: Mapping[str, Any],
               seed: int) -> ml_collections.ConfigDict:
  """``base`` with ``optimizer``, the hyperparameters of ``point`` and ``seed``; validated.

  Raises:
    ValueError: a key of ``point`` the config does not have, or a config that does not
      validate.
  """
  config = copy.deepcopy(base)
  config.optimizer.name = optimizer
  config.seed = seed
  for key, value in point.items():
    try:
      section, leaf = config_lib.locate(config, key)
    except KeyError:
      raise ValueError(f"search-space key {key!r} is not a config key") from None
    section[leaf] = value
  config_lib.validate(config)
  return config


def tuning_trials(workload: ml_collections.ConfigDict, optimizer: str, *, studies: int,
                  trials: int, qmc_seed: int, spaces: Mapping[str, Any] | None = None
                  ) -> list[Trial]:
  """The ``studies x trials`` tuning runs of ``optimizer`` on ``workload``."""
  space = tuning.space_for(optimizer, spaces)
  out = []
  for s in range(studies):
    for k, point in enumerate(tuning.quasirandom_points(space, trials, seed=qmc_seed + s)):
      seed = s * trials + k
      out.append(Trial(workload.name, optimizer, "trial", s, k, seed, point,
                       run_config(workload.base, optimizer, point, seed)))
  return out


def default_trials(workload: ml_collections.ConfigDict, optimizer: str, *, seeds: int
                   ) -> list[Trial]:
  """``optimizer`` at its own default learning rate (the base's other settings), seeds
  0, 1, ..."""
  point = {"optimizer.learning_rate": None}
  return [Trial(workload.name, optimizer, "default", -1, -1, i, point,
                run_config(workload.base, optimizer, point, i)) for i in range(seeds)]


def trial_time(result: Mapping[str, Any], measure: str = "steps") -> float:
  """Steps (or seconds) to the target; ``inf`` when never reached or diverged."""
  if measure not in TIME_MEASURES:
    raise ValueError(f"time_measure={measure!r}: expected one of {list(TIME_MEASURES)}")
  value = None if result.get("diverged") else result.get(f"{measure}_to_target")
  return math.inf if value is None else float(value)


def best_trial(results: Sequence[Mapping[str, Any]], *, measure: str = "steps") -> int:
  """Index of the fastest trial; among trials that never reached the target, the one
  with the best validation value (the results' ``headline_goal``)."""
  if not results:
    raise ValueError("best_trial needs at least one trial result")

  def key(i: int):
    r = results[i]
    best = r.get(f"best_val_{r['headline']}")
    sign = -1.0 if r.get("headline_goal", "max") == "max" else 1.0
    return (trial_time(r, measure),
            math.inf if best is None or r.get("diverged") else sign * best, i)

  return min(range(len(results)), key=key)


def rerun_trials(best: Trial, *, seeds: int, studies_seeds_base: int = RERUN_SEED_BASE
                 ) -> list[Trial]:
  """The best trial of a study, re-run with ``seeds`` new seeds."""
  out = []
  for i in range(seeds):
    seed = studies_seeds_base + best.study * seeds + i
    out.append(Trial(best.workload, best.optimizer, "rerun", best.study, best.index, seed,
                     best.point, run_config(best.config, best.optimizer, best.point, seed)))
  return out


def train_all(trials: Sequence[Trial], *, target: float | None, train_group: Callable,
              log=None, label: str = "", optimizer_as_value: bool = False
              ) -> list[dict[str, Any]]:
  """Trains ``trials`` grouped by program structure (runs that differ only in seed and
  learning rate, and with ``optimizer_as_value`` in the optimizer, share one compiled
  step); one result per trial, in order.

  ``train_group`` is `cnnjax.study.vmapped.train_group` with the strategy bound.
  """
  groups: dict[str, list[int]] = {}
  for i, t in enumerate(trials):
    groups.setdefault(group_key(t.config, optimizer_as_value=optimizer_as_value),
                      []).append(i)
  results: list[dict[str, Any] | None] = [None] * len(trials)
  for gi, idx in enumerate(groups.values(), 1):
    names = "/".join(dict.fromkeys(trials[i].optimizer for i in idx))
    out = train_group([trials[i].config for i in idx], target=target, log=log,
                      label=f"{label} {names} ({gi}/{len(groups)}, {len(idx)} runs)")
    for i, r in zip(idx, out):
      results[i] = r
  return results  # type: ignore[return-value]


def median_time(values: Sequence[float]) -> float:
  """Median with ``inf`` for runs that never reached the target (sorted last)."""
  v = sorted(values)
  n = len(v)
  if n == 0:
    return math.inf
  return v[n // 2] if n % 2 else (math.inf if math.isinf(v[n // 2]) else
                                  0.5 * (v[n // 2 - 1] + v[n // 2]))


def summarize(trials: Sequence[Trial], results: Sequence[Mapping[str, Any]], *,
              measure: str = "steps") -> dict[str, Any]:
  """One workload x optimizer cell of the benchmark from its runs' results.

  Returns:
    ``time`` (median over studies of the fastest trial's time, in ``measure``),
    ``seconds`` (the same in seconds), ``study_times``, ``best_points`` (per study),
    ``reached_fraction`` (tuning trials that reached the target: tuneability),
    ``rerun_val`` / ``rerun_test`` ``(mean, std)`` of the re-runs' best validation and
    test headline, ``rerun_time`` (median over re-runs), ``default_time``,
    ``default_val`` ``(mean, std)``, ``trials`` (per trial: point, time, best val).
  """
  cells = [(t, r) for t, r in zip(trials, results)]
  tuned = [(t, r) for t, r in cells if t.kind == "trial"]
  reruns = [(t, r) for t, r in cells if t.kind == "rerun"]
  defaults = [(t, r) for t, r in cells if t.kind == "default"]
  headline = results[0]["headline"]
  study_ids = sorted({t.study for t, _ in tuned})
  study_times, study_seconds, best_points = [], [], []
  for s in study_ids:
    mine = [(t, r) for t, r in tuned if t.study == s]
    b = best_trial([r for _, r in mine], measure=measure)
    study_times.append(trial_time(mine[b][1], measure))
    study_seconds.append(trial_time(mine[b][1], "seconds"))
    best_points.append(dict(mine[b][0].point))

  def val(r):
    return None if r.get("diverged") else r.get(f"best_val_{headline}")

  def test(r):
    return None if r.get("diverged") else r.get(f"test_{headline}")

  return {
      "time": median_time(study_times), "seconds": median_time(study_seconds),
      "study_times": study_times, "best_points": best_points,
      "reached_fraction": (sum(math.isfinite(trial_time(r, measure)) for _, r in tuned)
                           / len(tuned)) if tuned else None,
      "rerun_val": _mean_std([val(r) for _, r in reruns]),
      "rerun_test": _mean_std([test(r) for _, r in reruns]),
      "rerun_time": median_time([trial_time(r, measure) for _, r in reruns]),
      "default_time": median_time([trial_time(r, measure) for _, r in defaults]),
      "default_val": _mean_std([val(r) for _, r in defaults]),
      "default_test": _mean_std([test(r) for _, r in defaults]),
      "trials": [{"study": t.study, "index": t.index, "seed": t.seed, "point": dict(t.point),
                  "time": trial_time(r, measure), "best_val": val(r), "test": test(r),
                  "diverged": bool(r.get("diverged"))} for t, r in tuned],
      "headline": headline, "headline_goal": results[0].get("headline_goal", "max"),
  }
