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
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Study config file (a Python file with get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory; default runs/<study>-<timestamp>.")
_MEASURE = flags.DEFINE_bool(
    "measure_vmap", False, "Also time the largest group: vmapped vs one run after another.")
_MEASURE_STEPS = flags.DEFINE_integer("measure_steps", 40, "Train steps timed by --measure_vmap.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks for errors.")

EXIT_BAD_INPUT = 2


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_BAD_INPUT)


def _log(line: str) -> None:
  print(f"[{datetime.datetime.now():%H:%M:%S}] {line}", flush=True)


def run_study(study, workdir: str, *, measure_vmap: bool = False, measure_steps: int = 40,
              log=_log) -> dict:
  """Trains the study, writes results.json, report.md and plots/ into workdir."""
  from cnnjax.study import grid, report, vmapped  # pylint: disable=g-import-not-at-top
  t_start = time.perf_counter()
  variants = grid.expand(study)
  groups = grid.group_variants(variants)
  target = study.get("target_accuracy", None)
  title = study.get("title", "") or "study"
  base = study.base
  log(f"{title}: {len(variants)} runs in {len(groups)} vmapped group(s); "
      f"{base.model} on {base.dataset}, "
      + (f"{base.num_train_steps} steps" if base.num_train_steps else f"{base.num_epochs} epochs")
      + f", batch {base.batch_size}; outputs in {workdir}")
  results: list[dict] = [None] * len(variants)  # type: ignore[list-item]
  group_times = []
  for gi, group in enumerate(groups, 1):
    settings = list(dict.fromkeys(v.setting for v in group))
    label = (f"group {gi}/{len(groups)} [{settings[0]}" + (f" +{len(settings) - 1} settings"
             if len(settings) > 1 else "") + f", {len(group)} runs]")
    t = time.perf_counter()
    out = vmapped.train_group([v.config for v in group], log=log, label=label,
                              target_accuracy=target)
    group_times.append({"group": gi, "runs": len(group), "settings": settings,
                        "wall_seconds": time.perf_counter() - t,
                        "compile_seconds": out[0]["compile_seconds"],
                        "train_seconds": out[0]["train_seconds"]})
    log(f"{label} done in {group_times[-1]['wall_seconds']:.1f}s (compile "
        f"{out[0]['compile_seconds']:.1f}s)")
    for v, r in zip(group, out):
      results[v.index] = {"name": v.name, "setting": v.setting, "seed": v.seed,
                          "optimizer": v.optimizer, "learning_rate": v.learning_rate,
                          "loss": v.loss, "overrides": v.overrides, "group": gi, **r}
  wall = time.perf_counter() - t_start
  timing = {"total wall seconds": wall, "runs": len(variants), "groups": len(groups),
            "compile seconds (all groups)": sum(g["compile_seconds"] for g in group_times),
            "train seconds (all groups)": sum(g["train_seconds"] for g in group_times)}
  extra = {"groups": group_times, "timing": timing}
  if measure_vmap:
    biggest = max(groups, key=len)
    log(f"measuring vmap on the largest group ({len(biggest)} runs, {measure_steps} steps)")
    m = vmapped.measure_vmap([v.config for v in biggest], steps=measure_steps, log=log)
    extra["vmap_speed"] = m
    timing["vmap: K runs"] = m["k"]
    timing["vmap: steps timed"] = m["steps"]
    timing["vmap: vmapped seconds"] = m["vmapped_seconds"]
    timing["vmap: one-after-another seconds"] = m["sequential_seconds"]
    timing["vmap: speedup (sequential / vmapped)"] = m["speedup"]

  os.makedirs(workdir, exist_ok=True)
  study_desc = json.loads(study.to_json_best_effort())
  report.write_results(os.path.join(workdir, "results.json"), study_desc, results, extra)
  plots = report.plot_all(results, os.path.join(workdir, "plots"), title)
  n_test = results[0].get("test_examples") if results else None
  desc = (f"{len(variants)} runs: {base.model} on {base.dataset}, "
          + (f"{base.num_train_steps} steps" if base.num_train_steps else
             f"{base.num_epochs} epochs") + f", batch {base.batch_size}, seeds "
          f"{tuple(study.seeds)}. Variants that differ only in seed, learning rate or loss "
          f"were trained together in one vmapped program ({len(groups)} group(s)). "
          f"Target for 'steps to target': validation accuracy >= {target}.")
  text = report.write_report(os.path.join(workdir, "report.md"), title=title, description=desc,
                             results=results, target_accuracy=target, n_test=n_test,
                             timing=timing, plots=[f"plots/{p}" for p in plots])
  log(f"done in {wall:.1f}s: {os.path.join(workdir, 'report.md')}")
  return {"results": results, "report": text, **extra}


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; flags look like --config.key=value")
  logging.set_verbosity(logging.INFO if _VERBOSE.value else logging.WARNING)
  study = _CONFIG.value
  if study is None:
    _fail("--config is required, e.g. --config=experiments/configs/compare_optimizers.py")
  name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
  workdir = _WORKDIR.value or os.path.join(
      "runs", f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
  from cnnjax.data import DatasetNotFoundError  # pylint: disable=g-import-not-at-top
  try:
    out = run_study(study, workdir, measure_vmap=_MEASURE.value,
                    measure_steps=_MEASURE_STEPS.value)
  except (ValueError, TypeError, DatasetNotFoundError) as e:
    if _VERBOSE.value:
      traceback.print_exc()
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  print()
  print(out["report"].split("## Plots")[0].split("\n", 4)[-1].strip())
  print()
  print(out["report"].split("## Summary (generated)")[-1].strip())


if __name__ == "__main__":
  app.run(main)
