"""The optimizer benchmark: time to a validation target over workloads, AlgoPerf-style.

    python -m experiments.benchmark_optimizers --config=experiments/configs/optimizer_benchmark.py

Writes ``--workdir`` (default runs/optimizer_benchmark-<timestamp>): report.md (score,
defaults panel, per-workload tables), results.json (every trial) and plots/ (performance
profiles, defaults vs tuned, per workload the expected best-of-k curve and the
learning-rate sensitivity). ``--set_targets`` instead trains each workload's reference
run over its seeds and prints the target the AlgoPerf way (median of the best validation
values), to be stated in the workload's config. Protocol: `cnnjax.study.optimizer_benchmark`.
"""

import datetime
import os
import sys

from absl import flags
from ml_collections import config_flags

from experiments import cli

_UNSET = cli.take_none_overrides()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Benchmark config file (experiments/configs/optimizer_benchmark.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory; default runs/optimizer_benchmark-<timestamp>.")
_SET_TARGETS = flags.DEFINE_bool(
    "set_targets", False, "Train each workload's reference run and print its target.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and library logs.")


def _log(line: str) -> None:
  print(f"[{datetime.datetime.now():%H:%M:%S}] {line}", file=sys.stderr, flush=True)


def _workloads(bench) -> list:
  from experiments.configs import workloads  # pylint: disable=g-import-not-at-top
  out = []
  for name in bench.workloads:
    w = workloads.load(name)
    if bench.data_dir:
      w.base.data_dir = bench.data_dir
    out.append(w)
  return out


def main(argv):
  from cnnjax.study import benchmark_run  # pylint: disable=g-import-not-at-top
  from cnnjax.training.signals import Interrupted, StopRequest  # pylint: disable=g-import-not-at-top
  StopRequest().install()
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; flags look like --config.key=value")
  bench = cli.config_value(_CONFIG, _UNSET)
  if bench is None:
    cli.fail("--config is required, e.g. --config=experiments/configs/optimizer_benchmark.py")
  try:
    benchmark_run.check(bench)
    loaded = _workloads(bench)
  except ValueError as e:
    cli.fail(str(e), exc=e)
  cli.configure_process(cpu_lanes=True)
  workdir = _WORKDIR.value or os.path.join(
      "runs", f"optimizer_benchmark-{datetime.datetime.now():%Y%m%d-%H%M%S}")
  try:
    if _SET_TARGETS.value:
      benchmark_run.set_targets(bench, loaded, _log)
      return
    out = benchmark_run.run_benchmark(bench, loaded, workdir, _log)
  except Interrupted as e:
    cli.say(str(e))
    sys.exit(e.exit_code)
  except (ValueError, TypeError) as e:  # DatasetNotFoundError is a ValueError
    cli.fail(str(e), exc=e)
  print(out["report"].split("## Workloads")[0])


if __name__ == "__main__":
  cli.run(main)
