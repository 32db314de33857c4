"""A run's loss for curvature (BatchNorm modes), stability thresholds, training diagnostics."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from cnnjax import config as config_lib
from cnnjax import curvature
from cnnjax.training import build, curvature_loss, diagnostics, loop


def tiny_config(data_dir, **overrides):
  c = config_lib.get_config()
  c.data_dir, c.model, c.progress, c.parallel = data_dir, "tiny_cnn", "none", "none"
  c.num_train_steps, c.batch_size, c.log_every_steps = 4, 16, 2
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture(scope="module")
def tiny_run(data_dir):
  config = tiny_config(data_dir)
  config_lib.validate(config)
  return build.build_run(config)


def test_batch_stats_modes_are_the_train_and_eval_losses(tiny_run):
  """train = the train step's loss on that batch; eval = the evaluation loss."""
  run = tiny_run
  batch = next(run.data.train_batches(0))
  train = jax.jit(curvature_loss.loss_function(run, run.state, batch, batch_stats_mode="train"))
  _, metrics = jax.jit(run.train_step())(jax.tree.map(jnp.copy, run.state), batch,
                                         run.train_rng)
  assert float(train(run.state.params)) == pytest.approx(float(metrics["loss"]), rel=1e-5)
  evaluation = jax.jit(curvature_loss.loss_function(run, run.state, batch,
                                                    batch_stats_mode="eval"))
  sums = jax.jit(run.eval_step())(run.state, {**batch, "mask": np.ones(16, np.float32)})
  assert float(evaluation(run.state.params)) == pytest.approx(float(sums["loss_sum"]) / 16,
                                                              rel=1e-5)
  # BatchNorm makes them differ at initialisation (running averages are 0 / 1).
  assert abs(float(train(run.state.params)) - float(evaluation(run.state.params))) > 1e-3
  with pytest.raises(ValueError, match=r"batch_stats_mode='both' is not accepted; expected "
                                       r"one of \['eval', 'train'\]"):
    curvature_loss.loss_function(run, run.state, batch, batch_stats_mode="both")


def test_train_mode_keeps_each_training_batch_apart(tiny_run):
  """Two batches of 16 in "train" mode = the mean of their separate training losses."""
  run = tiny_run
  first, second = list(run.data.train_batches(0))[:2]
  both = {k: np.concatenate([first[k], second[k]]) for k in first}
  f = jax.jit(curvature_loss.batch_loss(run, batch_stats_mode="train"))
  loss = lambda b: f(run.state.params, run.state.batch_stats, b)
  assert float(loss(both)) == pytest.approx((float(loss(first)) + float(loss(second))) / 2,
                                            rel=1e-5)
  with pytest.raises(ValueError, match="does not split into BatchNorm batches of 16"):
    loss({k: v[:24] for k, v in both.items()})
  # The default diagnostics batch (num_examples=None) is one training batch.
  assert diagnostics.fixed_batch(run, None, 16)["image"].shape[0] == 16


def test_stability_thresholds_by_hand():
  section = config_lib.get_config().optimizer
  section.name = "sgd"
  assert diagnostics.stability_threshold(section, 0.04) == pytest.approx(50.0)
  section.momentum = 0.5  # heavy ball: (2 + 2 * 0.5) / 0.1
  assert diagnostics.stability_threshold(section, 0.1) == pytest.approx(30.0)
  section.name, section.momentum = "nesterov", None  # (2 + 1.8) / (2.8 * 0.1)
  assert diagnostics.stability_threshold(section, 0.1) == pytest.approx(3.8 / 0.28)
  section.name = "adam"
  assert diagnostics.stability_threshold(section, 0.1) is None
  assert diagnostics.preconditioned_threshold(section, 0.001) == pytest.approx(38_000.0)
  section.name, section.sam_base = "sam", "adamw"
  assert diagnostics.preconditioned_threshold(section, 0.01) == pytest.approx(3800.0)
  section.name = "momentum"
  assert diagnostics.preconditioned_threshold(section, 0.01) is None


@pytest.mark.parametrize("override,message", [
    ({"diagnostics.quantities": ("sharpness", "curvature")}, "diagnostics.quantities"),
    ({"diagnostics.quantities": ("preconditioned_sharpness",), "optimizer.name": "sgd"},
     "is 'sgd'; it is defined for"),
    ({"diagnostics.enabled": True, "diagnostics.num_examples": 40},
     "must be a multiple of batch_size=16"),
    ({"diagnostics.batch_stats_mode": "running"}, "diagnostics.batch_stats_mode='running'"),
    ({"diagnostics.every_steps": 0}, "diagnostics.every_steps=0"),
])
def test_bad_diagnostics_settings_are_refused(override, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(tiny_config("", **override))


@pytest.fixture(scope="module")
def diagnosed_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("diagnosed"))
  config = tiny_config(data_dir, **{
      "optimizer.name": "adam", "diagnostics.enabled": True, "diagnostics.every_steps": 3,
      "diagnostics.num_examples": 32, "diagnostics.lanczos_iterations": 6,
      "diagnostics.trace_samples": 4, "diagnostics.quantities": (
          "sharpness", "preconditioned_sharpness", "hessian_trace")})
  summary = loop.train_and_evaluate(config, workdir)
  return workdir, summary, config


def test_diagnostics_are_logged_and_reported(diagnosed_run, read_event_tags):
  workdir, summary, _ = diagnosed_run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  diag = [r for r in records if r["split"] == "diagnostics"]
  assert [r["step"] for r in diag] == [0, 3, 4]  # step 0, every 3 steps, the last step
  assert all(r["sharpness"] > 0 and r["seconds"] > 0 for r in diag)
  assert diag[0]["preconditioned_sharpness"] == "nan"  # no second moment before step 1
  assert diag[-1]["preconditioned_threshold"] == pytest.approx(38 / 0.001)
  for key in ("diagnostics_seconds", "diagnostics_compile_seconds", "final_sharpness",
              "final_hessian_trace", "final_preconditioned_sharpness"):
    assert key in summary, key
  assert summary["diagnostics_examples"] == 32 and summary["diagnostics_evaluations"] == 3
  assert os.path.getsize(os.path.join(workdir, "plots", "diagnostics.png")) > 0
  events = [os.path.join(workdir, "tensorboard", n)
            for n in os.listdir(os.path.join(workdir, "tensorboard"))]
  assert {"diagnostics/sharpness", "diagnostics/hessian_trace"} <= read_event_tags(events[0])


def test_logged_sharpness_is_the_hessians_top_eigenvalue(diagnosed_run, tiny_run):
  """The final logged sharpness against an independent 20-step Lanczos at the final state."""
  workdir, summary, _ = diagnosed_run
  run = tiny_run  # the same model, data and optimizer structure
  from cnnjax.training import checkpoint
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
                          if isinstance(x, jax.Array) else x, run.state)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=2)
  step, state, _ = ckpt.restore_latest(template)
  ckpt.close()
  assert step == 4
  batch = diagnostics.fixed_batch(run, 32, 16)
  loss_fn = curvature_loss.loss_function(run, state, batch, batch_stats_mode="train")
  reference = curvature.top_eigenvalues(loss_fn, state.params, k=1, num_iterations=20,
                                        key=jax.random.key(3))
  # Ritz values approach the top eigenvalue from below; 6 warm-started steps per evaluation.
  assert summary["final_sharpness"] <= float(reference[0]) * (1 + 1e-4)
  assert summary["final_sharpness"] >= 0.9 * float(reference[0])
  assert ravel_pytree(state.params)[0].size < 2000  # small enough for the 20 steps above


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _landscape(*args):
  env = {**os.environ, "PYTHONPATH": REPO, "CNNJAX_COMPILATION_CACHE":
         os.environ.get("CNNJAX_TEST_COMPILATION_CACHE", "0")}
  return subprocess.run([sys.executable, "-m", "experiments.landscape", *args], cwd=REPO,
                        capture_output=True, text=True, env=env, timeout=600)


def test_landscape_command_writes_consistent_slices(diagnosed_run, tmp_path):
  """`python -m experiments.landscape` on the run trained above."""
  trained = diagnosed_run[0]
  out_dir = str(tmp_path / "out")
  done = _landscape(f"--workdir={trained}", f"--other={trained}", f"--output_dir={out_dir}",
                    "--num_examples=32", "--points_1d=5", "--points_2d=3",
                    "--interpolation_points=4", "--hessian_examples=0",
                    "--chunk_examples=128")
  assert done.returncode == 0, done.stderr[-2000:]
  with open(os.path.join(out_dir, "landscape.json")) as f:
    out = json.load(f)
  assert out["batch_stats_mode"] == "train" and out["num_examples"] == 32
  assert "statistics of each batch of 16 examples" in out["batch_stats_note"]
  centre = out["one_d"]["loss"][2]
  assert np.asarray(out["two_d"]["loss"])[1, 1] == pytest.approx(centre, rel=1e-5)
  assert "eigen" not in out  # --hessian_examples=0 skips it (its Lanczos: test_curvature.py)
  # The line from a run to itself is that one point: every alpha gives the centre.
  np.testing.assert_allclose(out["interpolation"]["loss"], centre, rtol=1e-5)
  for name in ("landscape_1d.png", "landscape_2d.png", "interpolation.png"):
    assert os.path.getsize(os.path.join(out_dir, name)) > 0, name


def test_landscape_bad_input_is_one_line(tmp_path):
  done = _landscape(f"--workdir={tmp_path}")
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      f"error: --workdir={tmp_path}: no config.json; is it a cnnjax run directory?"]
