"""The optimizer benchmark: protocol pieces by hand, and a tiny end-to-end run.

References: the Halton points are scipy.stats.qmc's (the test maps them by hand); the
best-of-k expectation for k = 1 is the plain mean of the trial values, and for k equal
to a large number the maximum (bootstrap limits); the protocol's choices (fastest
trial per study, median over studies) follow AlgoPerf's rules (Dahl et al. 2023, 4.4).
"""

import math
import os

import numpy as np
import pytest
from scipy.stats import qmc

from cnnjax.study import optimizer_benchmark as ob
from cnnjax.study import tuning
from experiments.configs import workloads


def test_quasirandom_points_are_scipy_halton_mapped_log_uniformly():
  space = {"optimizer.learning_rate": (1e-4, 1e-1, "log"), "optimizer.b1": (0.8, 0.99, "linear")}
  points = tuning.quasirandom_points(space, 6, seed=3)
  unit = qmc.Halton(d=2, scramble=True, seed=3).random(6)  # keys in sorted order: b1, lr
  for p, (ub1, ulr) in zip(points, unit):
    assert p["optimizer.b1"] == pytest.approx(0.8 + ub1 * 0.19)
    assert p["optimizer.learning_rate"] == pytest.approx(1e-4 * 1000 ** ulr)
  assert tuning.quasirandom_points(space, 6, seed=3) == points  # seeded
  assert tuning.quasirandom_points(space, 6, seed=4) != points


def test_every_optimizer_has_a_space_around_its_default():
  from cnnjax import optimizers
  for name in optimizers.names():
    low, high, scale = tuning.space_for(name)["optimizer.learning_rate"]
    assert scale == "log" and low < optimizers.default_learning_rate(name) < high
  with pytest.raises(ValueError, match="no search space for optimizer 'shampoo'"):
    tuning.space_for("shampoo")
  with pytest.raises(ValueError, match="low < high"):
    tuning.space_for("adam", {"adam": {"optimizer.learning_rate": (1.0, 0.1, "log")}})


def test_expected_best_of_k_limits():
  values = [0.5, 0.9, 0.7, 0.8]
  curve = tuning.expected_best_of_k(values, [1, 200], resamples=4000, seed=0)
  assert curve["mean"][0] == pytest.approx(np.mean(values), abs=0.01)
  assert curve["mean"][1] == pytest.approx(0.9)
  assert curve["low"][0] <= curve["mean"][0] <= curve["high"][0]
  low = tuning.expected_best_of_k(values, [200], goal="min", resamples=100)
  assert low["mean"][0] == pytest.approx(0.5)


def _result(steps, best, *, diverged=False, goal="max"):
  return {"steps_to_target": steps, "seconds_to_target": None if steps is None else steps / 10,
          "best_val_accuracy": best, "test_accuracy": best, "headline": "accuracy",
          "headline_goal": goal, "diverged": diverged}


def test_best_trial_and_trial_time():
  results = [_result(None, 0.95), _result(120, 0.99), _result(80, 0.98), _result(None, 0.97)]
  assert ob.best_trial(results) == 2
  assert ob.trial_time(results[0]) == math.inf and ob.trial_time(results[2]) == 80
  assert ob.trial_time(results[2], "seconds") == 8.0
  # None reached: the best validation value wins; a diverged run never does.
  assert ob.best_trial([_result(None, 0.9), _result(None, 0.97), _result(None, 0.99,
                                                                          diverged=True)]) == 1
  with pytest.raises(ValueError, match="time_measure='epochs'"):
    ob.trial_time(results[0], "epochs")


def test_median_with_never_reached():
  assert ob.median_time([10, 30, 20]) == 20
  assert ob.median_time([10, math.inf]) == math.inf
  assert ob.median_time([10, 20, math.inf]) == 20
  assert ob.median_time([10, 20, 30, math.inf]) == 25


def test_plan_and_summary_follow_the_protocol():
  w = workloads.load("digits_bn_cnn")
  trials = ob.tuning_trials(w, "adam", studies=2, trials=3, qmc_seed=0)
  assert [(t.study, t.index, t.seed) for t in trials] == [
      (0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 3), (1, 1, 4), (1, 2, 5)]
  assert all(t.config.optimizer.name == "adam" for t in trials)
  assert trials[0].config.optimizer.learning_rate == trials[0].point["optimizer.learning_rate"]
  reruns = ob.rerun_trials(trials[4], seeds=2)
  assert [t.seed for t in reruns] == [10_002, 10_003] and reruns[0].point == trials[4].point
  defaults = ob.default_trials(w, "adam", seeds=2)
  assert all(t.config.optimizer.learning_rate is None for t in defaults)
  results = [_result(200, 0.99), _result(None, 0.9), _result(120, 0.98),   # study 0: 120
             _result(None, 0.95), _result(300, 0.99), _result(None, 0.97),  # study 1: 300
             _result(150, 0.99), _result(250, 0.985),                        # re-runs
             _result(None, 0.96), _result(400, 0.98)]                        # defaults
  cell = ob.summarize(trials + reruns + defaults, results)
  assert cell["study_times"] == [120, 300] and cell["time"] == 210
  assert cell["best_points"] == [trials[2].point, trials[4].point]
  assert cell["reached_fraction"] == pytest.approx(3 / 6)
  assert cell["rerun_val"][0] == pytest.approx(0.9875) and cell["rerun_time"] == 200
  assert cell["default_time"] == math.inf


def test_shipped_benchmark_and_workloads_are_valid_and_documented():
  from cnnjax import config as config_lib
  from cnnjax.study import benchmark_run
  from experiments.configs import optimizer_benchmark
  benchmark_run.check(optimizer_benchmark.get_config())
  assert "python -m experiments.benchmark_optimizers" in optimizer_benchmark.__doc__
  assert "Measured" in optimizer_benchmark.__doc__
  for name in workloads.NAMES:
    w = workloads.load(name)
    config_lib.validate(w.base)
    # The stated target is the median of the stated reference values (AlgoPerf's rule).
    assert w.target == sorted(w.reference.measured)[1], name
    assert w.name == name and w.base.optimizer.learning_rate is None


def test_report_ranks_by_score_and_writes_plots(tmp_path):
  """Hand-made cells: a is fastest on w1 (100 vs 150 steps), b never reaches w2's target,
  so a scores 1 and b (4 - 1.5) / 2 / 3 = 5/12."""
  from cnnjax.study import benchmark_report
  w = workloads.load("digits_bn_cnn")

  def cell(opt, steps_w):
    trials = ob.tuning_trials(w, opt, studies=1, trials=2, qmc_seed=0)
    defaults = ob.default_trials(w, opt, seeds=1)
    return ob.summarize(trials + defaults, [_result(steps_w, 0.99), _result(None, 0.9),
                                            _result(None, 0.95)])

  cells = {"w1": {"a": cell("adam", 100), "b": cell("momentum", 150)},
           "w2": {"a": cell("adam", 80), "b": cell("momentum", None)}}
  described = {n: {"description": n, "target": 0.99, "reference_note": "by hand"}
               for n in cells}
  text = benchmark_report.write_benchmark(
      str(tmp_path), title="t", description="d", workloads=described, cells=cells,
      unit="steps", max_ratio=4.0, timing={"total wall seconds": 1.0}, settings={})
  assert "| 1 | a | 1.000 |" in text and f"| 2 | b | {5 / 12:.3f} |" in text
  for name in ("report.md", "results.json", "plots/profiles.png",
               "plots/defaults_vs_tuned.png", "plots/workload_w1.png"):
    assert os.path.getsize(tmp_path / name) > 0


def test_unknown_workload_is_refused_by_name():
  with pytest.raises(ValueError, match="unknown workload 'imagenet'"):
    workloads.load("imagenet")


def test_tiny_benchmark_end_to_end(data_dir, tmp_path):
  """Two optimizers on a shortened digits workload: report, results and plots exist and
  the score ranks what the times say."""
  from cnnjax.study import benchmark_run
  from experiments.configs import optimizer_benchmark
  bench = optimizer_benchmark.get_config()
  bench.workloads = ("digits_bn_cnn",)
  bench.optimizers = ("momentum", "adam")
  bench.studies, bench.trials, bench.seeds, bench.default_seeds = 1, 2, 1, 1
  w = workloads.load("digits_bn_cnn")
  w.base.data_dir = data_dir
  w.base.model = "tiny_cnn"
  w.base.batch_size = 64
  w.base.num_train_steps = 40
  w.target = 0.5
  out = benchmark_run.run_benchmark(bench, [w], str(tmp_path), log=lambda _: None)
  cells = out["cells"]["digits_bn_cnn"]
  assert set(cells) == {"momentum", "adam"}
  for name in ("report.md", "results.json", "plots/profiles.png",
               "plots/defaults_vs_tuned.png", "plots/workload_digits_bn_cnn.png"):
    assert os.path.getsize(tmp_path / name) > 0
  text = out["report"]
  assert "Benchmark score" in text and "defaults: best of all" in text
  times = {o: c["time"] for o, c in cells.items()}
  if times["adam"] != times["momentum"]:
    faster = min(times, key=times.get)
    assert f"| 1 | {faster} |" in text
  with pytest.raises(ValueError, match="no target"):
    w.target = None
    benchmark_run.run_benchmark(bench, [w], str(tmp_path / "again"), log=lambda _: None)


@pytest.mark.parametrize("argv, expected", [
    (["-m", "experiments.benchmark_optimizers",
      "--config=experiments/configs/optimizer_benchmark.py", "--config.studies=0"],
     "studies=0: expected an integer >= 1"),
    (["-m", "experiments.compare", "--config=experiments/configs/compare_optimizers.py",
      "--strategy=fastest"], "'fastest'"),
])
def test_bad_benchmark_and_strategy_input_is_one_line(argv, expected, tmp_path):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  p = subprocess.run([sys.executable, *argv, f"--workdir={tmp_path / 'out'}"], cwd=repo,
                     capture_output=True, text=True, timeout=120,
                     env={**os.environ, "PYTHONPATH": repo})
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2, p.stderr
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], p.stderr
  assert not (tmp_path / "out").exists()
