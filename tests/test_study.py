"""Studies: grid expansion and grouping, the vmapped trainer against single runs, reports.

The reference for the vmapped trainer is the project's own single-run trainer
(`cnnjax.training.loop.train_and_evaluate`, ``parallel="none"``), an independent code
path (AOT-compiled un-vmapped step, its own data loop, metrics and evaluation). The Welch
statistic is checked against scipy.stats.ttest_ind(equal_var=False).
"""

import json
import math

import numpy as np
import pytest
from scipy import stats

from cnnjax.study import aggregate, expand, group_variants, parse_loss_spec, plot_all, welch
from cnnjax.study import train_group, write_report
from cnnjax.training import loop
from experiments.configs import (
    calibration, compare_losses, compare_optimizers, default, long_tail, lr_sweep, noisy_labels)


def tiny(data_dir, seed=0, **opt):
  c = default.get_config()
  c.data_dir = data_dir
  c.model = "tiny_cnn"
  c.batch_size = 64             # 20 steps per epoch on the 1,294 digits train images
  c.num_train_steps = 30        # two epochs: 20 + 10 steps
  c.log_every_steps = 10
  c.progress = "none"
  c.parallel = "none"
  c.seed = seed
  c.optimizer.name = "momentum"
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = None
  for k, v in opt.items():
    c.optimizer[k] = v
  return c


def test_parse_loss_spec():
  assert parse_loss_spec("focal:gamma=2.0,alpha=None") == ("focal", {"gamma": 2.0, "alpha": None})
  assert parse_loss_spec(" multi_margin ") == ("multi_margin", {})
  with pytest.raises(ValueError, match="key=value"):
    parse_loss_spec("focal:gamma")
  with pytest.raises(ValueError, match="literal"):
    parse_loss_spec("focal:gamma=two")


def test_ready_made_studies_expand_and_group():
  opt = expand(compare_optimizers.get_config())
  assert len(opt) == 8 * 3
  # One group per optimizer (different optimizer-state pytrees), seeds stacked inside.
  assert [len(g) for g in group_variants(opt)] == [3] * 8
  lrs = {v.optimizer: v.learning_rate for v in opt}
  assert lrs == {"sgd": 0.01, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.01,
                 "rmsprop": 0.001, "adam": 0.001, "adamax": 0.002, "nadam": 0.001}
  losses = expand(compare_losses.get_config())
  assert len(group_variants(losses)) == 1  # every loss and seed in one program
  assert {v.config.loss.name for v in losses} >= {
      "sparse_categorical_cross_entropy", "focal", "mean_squared_error", "multi_margin"}
  sweep = expand(lr_sweep.get_config())
  assert [len(g) for g in group_variants(sweep)] == [12, 12, 12]
  # A structural difference (weight decay) splits a group.
  study = compare_losses.get_config()
  study.losses = ("sparse_categorical_cross_entropy",)
  a = expand(study)
  study.base.optimizer.weight_decay = 1e-4
  b = expand(study)
  assert len(group_variants(a + b)) == 2


@pytest.mark.parametrize("module", [noisy_labels, long_tail, calibration])
def test_mnist_5k_studies_expand_and_state_command_and_result(module):
  study = module.get_config()
  variants = expand(study)
  assert len(variants) == {"noisy_labels": 90, "long_tail": 30, "calibration": 18}[
      module.__name__.rsplit(".", 1)[1]]
  assert all(v.config.dataset == "mnist_5k" for v in variants)
  assert len(group_variants(variants, vmap=study.vmap)) == len(variants)
  doc = module.__doc__
  assert "python -m experiments.compare" in doc and "Measured" in doc


def test_expand_rejects_bad_studies():
  study = compare_losses.get_config()
  study.seeds = (0, 0)
  with pytest.raises(ValueError, match="repeated"):
    expand(study)
  study = compare_losses.get_config()
  study.losses = ("no_such_loss",)
  with pytest.raises(ValueError, match="no_such_loss"):
    expand(study)


def _parity_configs(data_dir):
  configs = [tiny(data_dir, 0, learning_rate=0.05), tiny(data_dir, 1, learning_rate=0.1),
             tiny(data_dir, 2, learning_rate=0.05), tiny(data_dir, 0, learning_rate=1e30)]
  configs[2].loss.name, configs[2].loss.gamma = "focal", 1.0
  return configs


@pytest.fixture(scope="module")
def alone(data_dir, tmp_path_factory):
  """The three finite value-variants (seed, lr, loss), each trained by the single-run
  trainer."""
  return [loop.train_and_evaluate(c, str(tmp_path_factory.mktemp("alone")))
          for c in _parity_configs(data_dir)[:3]]


@pytest.fixture(scope="module")
def parity(data_dir, alone):
  """The three value-variants + one that diverges, in one vmapped group."""
  return train_group(_parity_configs(data_dir), target=0.5, strategy="vmap"), alone


@pytest.fixture(scope="module")
def parity_sequential(data_dir, alone):
  """The same group trained with the sequential strategy (one un-vmapped program, each
  epoch in chunks of 10 steps: the 20 + 10 steps share one compiled scan)."""
  return train_group(_parity_configs(data_dir), target=0.5, strategy="sequential"), alone


@pytest.fixture(scope="module")
def parity_lanes(data_dir, alone):
  """The same group in lanes: two runs at a time, one per CPU device (of the test run's 8,
  as many as the machine has cores, at most 2 on CI)."""
  return train_group(_parity_configs(data_dir), target=0.5, strategy="lanes"), alone


_PARITY = {"vmap": "parity", "sequential": "parity_sequential", "lanes": "parity_lanes"}


@pytest.mark.parametrize("strategy", ["vmap", "sequential", "lanes"])
def test_group_equals_runs_trained_alone(strategy, request):
  grouped, alone = request.getfixturevalue(_PARITY[strategy])
  assert {g["strategy"] for g in grouped} == {strategy}
  from cnnjax.study import lanes
  assert {g["lanes"] for g in grouped} == (
      {min(4, lanes.cpu_cores())} if strategy == "lanes" else {4 if strategy == "vmap" else 1})
  for g, a in zip(grouped, alone):
    assert not g["diverged"]
    assert len(g["history"]) == len(a["history"]) == 2
    for hg, ha in zip(g["history"], a["history"]):
      assert hg["step"] == ha["step"]
      np.testing.assert_allclose(hg["train_loss"], ha["train_loss"], rtol=1e-4)
      np.testing.assert_allclose(hg["val_loss"], ha["val_loss"], rtol=1e-4)
      # Within one of the 144 validation examples.
      assert abs(hg["val_accuracy"] - ha["val_accuracy"]) <= 1 / 144 + 1e-9
    np.testing.assert_allclose(g["test_loss"], a["test_loss"], rtol=1e-4)
    assert abs(g["test_accuracy"] - a["test_accuracy"]) <= 1 / 360 + 1e-9
    assert g["best_val_accuracy"] == pytest.approx(a["best_val_accuracy"], abs=1 / 144 + 1e-9)
  # The variants really differ (otherwise equality would prove little).
  assert len({round(g["test_loss"], 6) for g in grouped[:3]}) == 3


def test_lanes_across_optimizers_equal_runs_alone(data_dir, alone, tmp_path):
  """Momentum and Adam in one group (one `optimizers.switched` program), three runs in
  lanes of two (the second pair padded with a copy of its run): each run as trained alone
  by the single-run trainer."""
  configs = [*_parity_configs(data_dir)[:1], tiny(data_dir, 1, learning_rate=3e-3),
             _parity_configs(data_dir)[1]]
  configs[1].optimizer.name = "adam"
  from cnnjax.study import grid
  assert grid.group_key(configs[0]) != grid.group_key(configs[1])
  assert (grid.group_key(configs[0], optimizer_as_value=True)
          == grid.group_key(configs[1], optimizer_as_value=True))
  grouped = train_group(configs, strategy="lanes")
  assert len(grouped) == 3
  references = [alone[0], loop.train_and_evaluate(configs[1], str(tmp_path / "adam")),
                alone[1]]
  for g, a in zip(grouped, references):
    for hg, ha in zip(g["history"], a["history"]):
      np.testing.assert_allclose(hg["train_loss"], ha["train_loss"], rtol=1e-4)
      np.testing.assert_allclose(hg["val_loss"], ha["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(g["test_loss"], a["test_loss"], rtol=1e-4)
    assert abs(g["test_accuracy"] - a["test_accuracy"]) <= 1 / 360 + 1e-9
  assert abs(grouped[0]["test_loss"] - grouped[1]["test_loss"]) > 1e-3


def test_switched_state_is_one_vector_only_when_every_choice_is_per_coordinate(data_dir):
  """The group of `test_lanes_across_optimizers_equal_runs_alone` (momentum + Adam) trains
  on the raveled parameters; with LAMB among the choices (per-tensor trust ratio) the
  switched state keeps the parameter tree."""
  import jax
  from cnnjax.training.build import build_run
  momentum, adam, lamb = (tiny(data_dir, 0) for _ in range(3))
  adam.optimizer.name = "adam"
  lamb.optimizer.name, lamb.optimizer.weight_decay = "lamb", 0.0

  def moment_shapes(choices):
    state = build_run(momentum, optimizer_choices=choices).state
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    return {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim}, n_params

  flat, n_params = moment_shapes([momentum, adam])
  assert flat == {(n_params,)}
  tree, _ = moment_shapes([momentum, lamb])
  assert (n_params,) not in tree and len(tree) > 2   # kernels, biases, scales...


@pytest.mark.parametrize("strategy", ["vmap", "sequential", "lanes"])
def test_diverged_variant_is_marked_and_isolated(strategy, request):
  grouped, _ = request.getfixturevalue(_PARITY[strategy])
  bad = grouped[3]
  assert bad["diverged"] and bad["diverged_step"] is not None and bad["test_accuracy"] is None
  assert all(math.isfinite(g["test_loss"]) for g in grouped[:3])


def test_welch_matches_scipy():
  a, b = [0.91, 0.93, 0.95, 0.92], [0.88, 0.90, 0.89]
  ours = welch(a, b)
  ref = stats.ttest_ind(a, b, equal_var=False)
  assert ours["t"] == pytest.approx(ref.statistic, rel=1e-9)
  assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-9)
  assert ours["critical"] == pytest.approx(stats.t.ppf(0.975, ours["df"]), rel=1e-12)


def test_report_and_plots(parity_lanes, tmp_path):
  grouped, _ = parity_lanes
  results = []
  for i, r in enumerate(grouped):
    setting = ["sgd lr=0.05 / ce", "sgd lr=0.1 / ce", "sgd lr=0.05 / focal", "sgd lr=1e+30 / ce"][i]
    results.append({**r, "name": f"{setting} / seed {i}", "setting": setting, "seed": i,
                    "optimizer": "sgd", "learning_rate": [0.05, 0.1, 0.05, 1e30][i],
                    "loss": "focal" if i == 2 else "ce"})
  rows = aggregate(results)
  assert rows[-1]["setting"] == "sgd lr=1e+30 / ce" and rows[-1]["diverged"] == 1
  assert rows[0]["mean"] == max(r["test_accuracy"] for r in grouped[:3])
  names = plot_all(results, str(tmp_path / "plots"), "test")
  assert {"learning_curves.png", "final_accuracy.png", "lr_sensitivity.png",
          "loss_comparison.png"} <= set(names)
  for n in names:
    with open(tmp_path / "plots" / n, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  text = write_report(str(tmp_path / "report.md"), title="t", description="d", results=results,
                      target=0.5, n_test=360, timing={"total": 1.0},
                      plots=[f"plots/{n}" for n in names])
  assert "| 1 |" in text and "Summary (generated)" in text and "1/1 |" in text
  json.dumps(results)  # results.json must be writable as plain JSON


def test_reliability_panels_are_named_by_what_tells_them_apart(tmp_path, monkeypatch):
  from cnnjax.study import plots
  titles = []
  real_save = plots.save

  def spy(fig, path):
    titles.append([ax.get_title().split("\n")[0] for ax in fig.axes])
    real_save(fig, path)

  monkeypatch.setattr(plots, "save", spy)
  bins = {"count": [0, 2, 3], "confidence": [0.0, 0.5, 0.9], "accuracy": [0.0, 0.5, 1.0]}
  run = lambda setting, opt, method: {
      "setting": setting, "optimizer": opt, "loss": "ce", "method": method, "seed": 0,
      "diverged": False, "test_ece": 0.1, "test_details": {"reliability": bins}}
  # Optimizers compared with one loss: every run's method is the loss, so the panels are
  # named by optimizer (they all read "ce" before).
  plots._reliability([run("sgd / ce", "sgd", "ce"), run("adam / ce", "adam", "ce")],
                     str(tmp_path), "t", lambda s: s.rsplit(" / ", 1)[0])
  # A calibration study: one optimizer, the methods differ.
  plots._reliability([run("sgd / ce + ts", "sgd", "ts"), run("sgd / ce + ls", "sgd", "ls")],
                     str(tmp_path), "t", lambda s: s.rsplit(" / ", 1)[0])
  # Optimizers x methods that all keep the loss: only the whole setting tells them apart.
  plots._reliability([run(f"{o} / ce + {m}", o, m) for o in ("sgd", "adam") for m in ("a", "b")],
                     str(tmp_path), "t", lambda s: s.rsplit(" / ", 1)[0])
  assert titles == [["sgd", "adam"], ["ts", "ls"],
                    ["sgd / ce + a", "sgd / ce + b", "adam / ce + a", "adam / ce + b"]]


def test_strategy_resolution_and_bad_names():
  from cnnjax.study import resolve_strategy
  assert resolve_strategy("auto", "cpu") == "lanes"
  assert resolve_strategy("auto", "gpu") == "vmap" and resolve_strategy("auto", "tpu") == "vmap"
  assert resolve_strategy("vmap", "cpu") == "vmap"
  with pytest.raises(ValueError, match="'fast' is not one of"):
    resolve_strategy("fast")
  study = compare_losses.get_config()
  study.strategy = "fast"
  with pytest.raises(ValueError, match="study.strategy='fast'"):
    expand(study)
