"""Running the optimizer benchmark: checks, target setting, the full protocol, the report.

`experiments.benchmark_optimizers` is the command; this module takes the benchmark config
and the loaded workloads (`experiments/configs/workloads/`) and does the work, so it can
be called from Python and tests without flags. The protocol pieces are in
`cnnjax.study.optimizer_benchmark`, the report in `cnnjax.study.benchmark_report`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from cnnjax.study import benchmark_report
from cnnjax.study import grid
from cnnjax.study import optimizer_benchmark as ob
from cnnjax.study import vmapped

__all__ = ["BENCHMARK_KEYS", "check", "run_benchmark", "set_targets"]

BENCHMARK_KEYS = ("title", "workloads", "optimizers", "studies", "trials", "seeds",
                  "default_seeds", "qmc_seed", "search_spaces", "time_measure", "max_ratio",
                  "defaults", "data_dir", "strategy")

Log = Callable[[str], None]


def check(bench: ml_collections.ConfigDict) -> None:
  """Raises ValueError (naming the key and what it accepts) for a bad benchmark config.

  Starts nothing: JAX must not initialise before the entry point's process settings.
  """
  from cnnjax import optimizers  # pylint: disable=g-import-not-at-top
  unknown = sorted(set(bench.keys()) - set(BENCHMARK_KEYS))
  if unknown:
    raise ValueError(f"unknown benchmark key(s) {unknown}; accepted: {list(BENCHMARK_KEYS)}")
  for key in ("studies", "trials", "seeds", "default_seeds"):
    value = bench[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{key}={value!r}: expected an integer >= 1")
  if bench.time_measure not in ob.TIME_MEASURES:
    raise ValueError(f"time_measure={bench.time_measure!r}: expected one of "
                     f"{list(ob.TIME_MEASURES)}")
  if not bench.max_ratio > 1:
    raise ValueError(f"max_ratio={bench.max_ratio!r}: expected a number > 1")
  if not bench.optimizers or not bench.workloads:
    raise ValueError("the benchmark needs at least one optimizer and one workload")
  if bench.strategy not in grid.STRATEGIES:
    raise ValueError(f"strategy={bench.strategy!r}: expected one of {list(grid.STRATEGIES)}")
  for name in bench.optimizers:
    if name not in optimizers.names():
      raise ValueError(f"optimizer {name!r} is not known; known: {optimizers.names()}")


def _reference_note(w: ml_collections.ConfigDict) -> str:
  ref = w.reference
  measured = tuple(ref.measured or ())
  return (f"median over seeds {tuple(ref.seeds)} of the best validation value of "
          f"{ref.optimizer} {ref.learning_rate:g}"
          + (f": {', '.join(f'{v:.4f}' for v in measured)}" if measured else ""))


def set_targets(bench: ml_collections.ConfigDict,
                workloads: Sequence[ml_collections.ConfigDict], log: Log) -> dict:
  """Trains every workload's reference run; returns ``{workload: (target, values)}``: the
  AlgoPerf target, the median of the reference seeds' best validation values."""
  train = lambda configs, **kw: vmapped.train_group(configs, strategy=bench.strategy, **kw)
  out = {}
  for w in workloads:
    ref = w.reference
    point = {"optimizer.learning_rate": float(ref.learning_rate)}
    trials = [ob.Trial(w.name, ref.optimizer, "reference", -1, -1, s, point,
                       ob.run_config(w.base, ref.optimizer, point, s)) for s in ref.seeds]
    results = ob.train_all(trials, target=None, train_group=train, log=log, label=w.name)
    values = [r[f"best_val_{r['headline']}"] for r in results]
    out[w.name] = (ob.median_time(values), values)
    log(f"{w.name}: reference {ref.optimizer} {ref.learning_rate:g}, best validation "
        f"{results[0]['headline']} per seed {[round(v, 4) for v in values]} -> target "
        f"{out[w.name][0]:.4f}")
  return out


def _run_workload(bench: ml_collections.ConfigDict, w: ml_collections.ConfigDict,
                  train: Callable, shared: bool, spaces: dict, log: Log) -> dict[str, Any]:
  """One workload: tuning trials and default-rate runs, then each study's best re-run;
  returns ``{optimizer: ob.summarize(...)}``."""
  plan = []
  for opt in bench.optimizers:
    plan += ob.tuning_trials(w, opt, studies=bench.studies, trials=bench.trials,
                             qmc_seed=bench.qmc_seed, spaces=spaces)
    if bench.defaults:
      plan += ob.default_trials(w, opt, seeds=bench.default_seeds)
  results = ob.train_all(plan, target=w.target, train_group=train, log=log, label=w.name,
                         optimizer_as_value=shared)
  reruns = []
  for opt in bench.optimizers:
    for s in range(bench.studies):
      mine = [(t, r) for t, r in zip(plan, results)
              if t.optimizer == opt and t.kind == "trial" and t.study == s]
      best = mine[ob.best_trial([r for _, r in mine], measure=bench.time_measure)][0]
      reruns += ob.rerun_trials(best, seeds=bench.seeds)
  log(f"{w.name}: re-running the best trial of each study with {bench.seeds} seed(s)")
  rerun_results = ob.train_all(reruns, target=w.target, train_group=train, log=log,
                               label=f"{w.name} re-runs", optimizer_as_value=shared)
  everything = list(zip(plan + reruns, results + rerun_results))
  return {opt: ob.summarize([t for t, _ in everything if t.optimizer == opt],
                            [r for t, r in everything if t.optimizer == opt],
                            measure=bench.time_measure)
          for opt in bench.optimizers}


def _description(bench: ml_collections.ConfigDict, n_workloads: int) -> str:
  return (
      f"{len(bench.optimizers)} optimizers x {n_workloads} workloads. Per optimizer and "
      f"workload: {bench.studies} tuning studies of {bench.trials} quasirandom trials "
      f"(Halton, seed {bench.qmc_seed} + study; search spaces in "
      "`cnnjax.study.tuning.DEFAULT_SPACES` unless the config gives one), the median over "
      f"studies of the fastest trial's {bench.time_measure} to the validation target "
      f"(AlgoPerf); each study's best trial re-run with {bench.seeds} new seed(s) (mean ± "
      f"std over the re-runs of all studies); each optimizer also at its default learning "
      f"rate ({bench.default_seeds} seeds). Targets are checked at every validation (each "
      "epoch). Every optimizer's trials use the same quasirandom points relative to its "
      "search space (common random numbers across optimizers).")


def run_benchmark(bench: ml_collections.ConfigDict,
                  workloads: Sequence[ml_collections.ConfigDict], workdir: str,
                  log: Log) -> dict[str, Any]:
  """Runs the benchmark on ``workloads``; writes report.md, results.json and plots/ into
  ``workdir``; returns ``{"report", "cells", "timing"}``.

  Raises:
    ValueError: a workload without a target, or a bad config (see `check`).
  """
  check(bench)
  t_start = time.perf_counter()
  strategy = vmapped.resolve_strategy(bench.strategy)
  train = lambda configs, **kw: vmapped.train_group(configs, strategy=strategy, **kw)
  loaded = list(workloads)
  for w in loaded:
    if w.target is None:
      raise ValueError(f"workload {w.name!r} has no target; run --set_targets and state it "
                       "in its config")
  spaces = bench.search_spaces.to_dict() if bench.search_spaces else {}
  n_runs = len(loaded) * len(bench.optimizers) * (
      bench.studies * bench.trials + bench.studies * bench.seeds
      + (bench.default_seeds if bench.defaults else 0))
  log(f"{bench.title}: {len(bench.optimizers)} optimizers x {len(loaded)} workloads, "
      f"{bench.studies} studies x {bench.trials} trials, {bench.seeds} re-run seed(s) per "
      f"study, {bench.default_seeds} default-rate seed(s): {n_runs} runs "
      f"(strategy {strategy}); outputs in {workdir}")
  cells, described, wall = {}, {}, {}
  for w in loaded:
    t_w = time.perf_counter()
    cells[w.name] = _run_workload(bench, w, train, strategy != "vmap", spaces, log)
    described[w.name] = {"description": w.description, "target": w.target,
                         "reference_note": _reference_note(w)}
    wall[w.name] = time.perf_counter() - t_w
    log(f"{w.name} done in {wall[w.name]:.0f}s: " + ", ".join(
        f"{o} {cells[w.name][o]['time']:g}" for o in bench.optimizers))
  timing = {"total wall seconds": time.perf_counter() - t_start, "runs": n_runs,
            "strategy": strategy, **{f"{w} wall seconds": s for w, s in wall.items()}}
  text = benchmark_report.write_benchmark(
      workdir, title=bench.title, description=_description(bench, len(loaded)),
      workloads=described, cells=cells, unit=bench.time_measure, max_ratio=bench.max_ratio,
      timing=timing, settings=bench.to_dict())
  log(f"done in {timing['total wall seconds']:.0f}s: {os.path.join(workdir, 'report.md')}")
  return {"report": text, "cells": cells, "timing": timing}
