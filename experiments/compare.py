"""Loss x optimizer studies, in one command.

    python -m experiments.compare --config=experiments/configs/STUDY.py

Trains every variant of the study (variants that differ only in seed, learning rate or
loss share one vmapped, compiled-once program), then writes into ``--workdir``:
results.json, report.md and plots/*.png. ``--measure_vmap`` also times the largest
group trained with vmap against the same runs one after another.
Overrides: ``--config.seeds=0,1,2,3`` or ``--config.base.num_epochs=5``.
"""

import datetime
import json
import os
import sys
import time

from absl import flags
from ml_collections import config_flags

from experiments import cli

_UNSET = cli.take_none_overrides()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Study config file (a Python file with get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory; default runs/<study>-<timestamp>.")
_MEASURE = flags.DEFINE_bool(
    "measure_vmap", False, "Also time the largest group: vmapped vs one run after another.")
_MEASURE_STEPS = flags.DEFINE_integer("measure_steps", 40, "Train steps timed by --measure_vmap.")
_STRATEGY = flags.DEFINE_string(
    "strategy", None, "auto | vmap | sequential | lanes: how a group's runs share its "
    "compiled program (default: the study's `strategy`, else auto = the fastest on this "
    "backend: lanes on CPU, vmap on accelerators).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and library logs.")


def _log(line: str) -> None:
  print(f"[{datetime.datetime.now():%H:%M:%S}] {line}", file=sys.stderr, flush=True)


def _budget(base) -> str:
  return (f"{base.num_train_steps} steps" if base.num_train_steps else
          f"{base.num_epochs} epochs") + f", batch {base.batch_size}"


def _train_groups(groups, target, log, stop, select_by="", strategy="auto"
                  ) -> tuple[list[dict], list[dict]]:
  from cnnjax.study import vmapped  # pylint: disable=g-import-not-at-top
  results: dict[int, dict] = {}
  group_times = []
  for gi, group in enumerate(groups, 1):
    settings = list(dict.fromkeys(v.setting for v in group))
    label = (f"group {gi}/{len(groups)} [{settings[0]}" + (f" +{len(settings) - 1} settings"
             if len(settings) > 1 else "") + f", {len(group)} runs]")
    t = time.perf_counter()
    out = vmapped.train_group([v.config for v in group], log=log, label=label, target=target,
                              select_by=select_by, stop=stop, strategy=strategy)
    group_times.append({"group": gi, "runs": len(group), "settings": settings,
                        "strategy": out[0]["strategy"],
                        "wall_seconds": time.perf_counter() - t,
                        "compile_seconds": out[0]["compile_seconds"],
                        "train_seconds": out[0]["train_seconds"],
                        "eval_seconds": out[0]["eval_seconds"]})
    log(f"{label} done in {group_times[-1]['wall_seconds']:.1f}s (compile "
        f"{out[0]['compile_seconds']:.1f}s, evaluation {out[0]['eval_seconds']:.1f}s)")
    for v, r in zip(group, out):
      results[v.index] = {"name": v.name, "setting": v.setting, "seed": v.seed,
                          "optimizer": v.optimizer, "learning_rate": v.learning_rate,
                          "loss": v.loss, "overrides": v.overrides, "group": gi,
                          "condition": v.condition, "method": v.method, **r}
  return [results[i] for i in sorted(results)], group_times


def _measure(groups, steps: int, timing: dict, log) -> dict:
  from cnnjax.study import vmapped  # pylint: disable=g-import-not-at-top
  biggest = max(groups, key=len)
  log(f"measuring vmap on the largest group ({len(biggest)} runs, {steps} steps)")
  m = vmapped.measure_vmap([v.config for v in biggest], steps=steps, log=log)
  timing.update({"vmap: K runs": m["k"], "vmap: steps timed": m["steps"],
                 "vmap: vmapped seconds": m["vmapped_seconds"],
                 "vmap: one-after-another seconds": m["sequential_seconds"],
                 "vmap: speedup (sequential / vmapped)": m["speedup"]})
  return m


def _ranking(study, config) -> tuple[str, str]:
  """The result key a study ranks by and its direction (the task says which way is better)."""
  from cnnjax import tasks  # pylint: disable=g-import-not-at-top
  from cnnjax.data import catalog  # pylint: disable=g-import-not-at-top
  task = tasks.get_task(config.task, catalog.dataset_info(config.dataset))
  key = study.get("rank_by", "") or f"test_{task.headline}"
  metric = key.removeprefix("selected_test_").removeprefix("test_")
  return key, task.goal_of(metric)


_STRATEGY_KINDS = {
    "vmap": "vmapped group(s)",
    "sequential": "group(s), each one compiled program trained run after run, an epoch per "
                  "call (strategy sequential)",
    "lanes": "group(s), each one compiled program trained one run per CPU core side by side, "
             "an epoch per call (strategy lanes)",
}
_STRATEGY_NOTES = {
    "vmap": "stacked with vmap). ",
    "sequential": "one run after another, an epoch per compiled call). ",
    "lanes": "one run per device side by side, an epoch per compiled call). ",
}


def run_study(study, workdir: str, *, measure_vmap: bool = False, measure_steps: int = 40,
              log=_log, stop=None, strategy: str | None = None) -> dict:
  """Trains the study, writes results.json, report.md and plots/ into workdir.

  ``strategy`` (None = the study's ``strategy``, else "auto") is how each group's runs
  share its compiled program (`cnnjax.study.vmapped.resolve_strategy`).
  """
  from cnnjax.study import grid, plots, report, vmapped  # pylint: disable=g-import-not-at-top
  t_start = time.perf_counter()
  variants = grid.expand(study)
  vmap = study.get("vmap", True)
  strategy = vmapped.resolve_strategy(strategy or study.get("strategy", "auto") or "auto")
  # Un-vmapped runs may also share a program across optimizers (the choice a value).
  groups = grid.group_variants(variants, vmap=vmap,
                               optimizer_as_value=strategy != "vmap")
  target = study.get("target", None)
  title = study.get("title", "") or "study"
  base = study.base
  kind = (_STRATEGY_KINDS[strategy] if vmap else "separate programs (vmap=False)")
  log(f"{title}: {len(variants)} runs in {len(groups)} {kind}; {base.model} on "
      f"{base.dataset}, {_budget(base)}; outputs in {workdir}")
  results, group_times = _train_groups(groups, target, log, stop,
                                       study.get("select_by", "") or "", strategy)
  timing = {"total wall seconds": time.perf_counter() - t_start, "runs": len(variants),
            "groups": len(groups), "strategy": strategy if vmap else "separate",
            "compile seconds (all groups)": sum(g["compile_seconds"] for g in group_times),
            "train seconds (all groups, validation included)":
                sum(g["train_seconds"] for g in group_times),
            "evaluation seconds (all groups)": sum(g["eval_seconds"] for g in group_times)}
  extra = {"groups": group_times, "timing": timing}
  if measure_vmap:
    extra["vmap_speed"] = _measure(groups, measure_steps, timing, log)
  os.makedirs(workdir, exist_ok=True)
  report.write_results(os.path.join(workdir, "results.json"),
                       json.loads(study.to_json_best_effort()), results, extra)
  rank_by, rank_goal = _ranking(study, variants[0].config)
  names = plots.plot_all(results, os.path.join(workdir, "plots"), title)
  metric, _ = report.headline_of(results)
  desc = (f"{len(variants)} runs: {base.model} on {base.dataset}, {_budget(base)}, seeds "
          f"{tuple(study.seeds)}. "
          + (f"Variants that differ only in seed, learning rate or loss shared one compiled "
             f"program ({len(groups)} group(s); strategy {strategy}: "
             + _STRATEGY_NOTES[strategy]
             if vmap else
             "Every run was trained alone (vmap=False; programs shared through the "
             "compilation cache). ")
          + (f"Selected epoch: the best validation {study.select_by} of each run "
             "('selected' columns test that epoch's state; the validation split carries "
             "the same corruption as training). " if study.get("select_by", "") else "")
          + f"Target for 'steps to target': validation {metric} "
          f"{'>=' if results[0]['headline_goal'] == 'max' else '<='} {target}.")
  text = report.write_report(os.path.join(workdir, "report.md"), title=title, description=desc,
                             results=results, target=target,
                             n_test=results[0].get("test_examples") if results else None,
                             timing=timing, plots=[f"plots/{n}" for n in names],
                             rank_by=rank_by, rank_goal=rank_goal,
                             columns=tuple(study.get("columns", ()) or ()))
  log(f"done in {time.perf_counter() - t_start:.1f}s: {os.path.join(workdir, 'report.md')}")
  return {"results": results, "report": text, **extra}


def main(argv):
  from cnnjax.training.signals import Interrupted, StopRequest  # pylint: disable=g-import-not-at-top
  stop = StopRequest().install()
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; flags look like --config.key=value")
  from cnnjax.study.grid import STRATEGIES  # pylint: disable=g-import-not-at-top
  if _STRATEGY.value is not None and _STRATEGY.value not in STRATEGIES:
    cli.fail(f"--strategy={_STRATEGY.value!r} is not accepted; expected one of "
             f"{list(STRATEGIES)}")
  cli.configure_process(cpu_lanes=True)
  study = cli.config_value(_CONFIG, _UNSET)
  if study is None:
    cli.fail("--config is required, e.g. --config=experiments/configs/compare_optimizers.py")
  name = os.path.splitext(os.path.basename(
      config_flags.get_config_filename(flags.FLAGS["config"])))[0]
  workdir = _WORKDIR.value or os.path.join(
      "runs", f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
  try:
    out = run_study(study, workdir, measure_vmap=_MEASURE.value,
                    measure_steps=_MEASURE_STEPS.value, stop=stop, strategy=_STRATEGY.value)
  except Interrupted as e:
    cli.say(str(e))
    sys.exit(e.exit_code)
  except (ValueError, TypeError) as e:  # DatasetNotFoundError is a ValueError
    cli.fail(str(e), exc=e)
  print()
  print(out["report"].split("## Plots")[0].split("\n", 4)[-1].strip())
  print()
  print(out["report"].split("## Summary (generated)")[-1].strip())


if __name__ == "__main__":
  cli.run(main)
