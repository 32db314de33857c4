"""Which optimizer, with evidence: time to a validation target over cnnjax's workloads.

    python -m experiments.benchmark_optimizers --config=experiments/configs/optimizer_benchmark.py

AlgoPerf's external-tuning protocol at laptop scale (`cnnjax.study.optimizer_benchmark`):
per optimizer and workload, `studies` tuning studies of `trials` quasirandom trials
(learning rate, log-uniform over two decades around the optimizer's default), the
median over studies of the fastest trial's steps to the target; each study's best trial
re-run with `seeds` new seeds; every optimizer also at its default rate (`default_seeds`
seeds). The protocol's full sizes are flags: ``--config.studies=5 --config.trials=5
--config.seeds=3``.

Measured on the idle 2-core CPU: 168 runs in 775 s wall. Score (AlgoPerf, max ratio 4):
adam 0.667, nadam 0.333, momentum 0.306, nesterov 0.306; the best of the four at their
default rates 0.639. No optimizer reaches the digits target in its median study. Table and
reading: README, "Which optimizer, by the benchmark standard". Re-run with the `lanes`
strategy: 682 s, Adam and Nadam swapped on localization (README); with the switched
optimizer on one parameter vector (2026-12-02): 449 s (454 s for the command), same scores.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.title = "Optimizer benchmark"
  c.workloads = ("digits_bn_cnn", "mnist5k_lenet5", "scenes_localization")
  c.optimizers = ("momentum", "nesterov", "adam", "nadam")
  c.studies = 3          # AlgoPerf: 5 (odd: the median over studies is one study's time)
  c.trials = 3           # AlgoPerf: 5
  c.seeds = 1            # new seeds each study's best trial is re-run with
  c.default_seeds = 2    # seeds of each optimizer at its default learning rate
  c.qmc_seed = 0
  c.search_spaces = ml_collections.ConfigDict()  # optimizer -> {key: (low, high, scale)}
  c.time_measure = "steps"   # steps | seconds (seconds depend on the machine's load)
  c.max_ratio = 4.0
  c.defaults = True      # also run every optimizer at its default learning rate
  c.data_dir = ""        # for every workload ("" = the run default)
  c.strategy = "auto"    # how runs of one structure share a program (see experiments.compare)
  return c
