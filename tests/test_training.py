"""End-to-end training on the embedded digits data, and properties of the pure steps."""

import json
import os
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import losses
from cnnjax.models import get_model
from cnnjax.training import create_train_state, eval_step, loop, train_step
from experiments.configs import default as default_config


def small_config(data_dir, **overrides):
  c = default_config.get_config()
  c.data_dir = data_dir
  c.num_train_steps = 24
  c.log_every_steps = 8
  c.progress = "none"
  c.parallel = "none"
  for k, v in overrides.items():
    c[k] = v
  return c


def read_event_tags(path):
  """Scalar tags in a TensorBoard event file, parsed from the TFRecord framing by hand."""
  from tensorboardX.proto import event_pb2
  tags = set()
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    tags.update(v.tag for v in event.summary.value)
    pos += 12 + length + 4
  return tags


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("run"))
  summary = loop.train_and_evaluate(small_config(data_dir), workdir)
  return workdir, summary


def test_run_writes_every_output(finished_run):
  workdir, summary = finished_run
  for name in ("config.json", "manifest.json", "metrics.jsonl", "summary.json",
               "plots/learning_curves.png", "plots/confusion_matrix.png"):
    path = os.path.join(workdir, name)
    assert os.path.getsize(path) > 0, name
  with open(os.path.join(workdir, "summary.json")) as f:
    on_disk = json.load(f)
  for key in ("test_accuracy", "test_loss", "best_val_accuracy", "epochs", "steps",
              "train_seconds", "compile_seconds", "examples_per_sec", "num_params", "status",
              "versions", "devices"):
    assert key in on_disk, key
  assert on_disk["status"] == "completed"
  assert on_disk["steps"] == 24
  assert on_disk["test_examples"] == 360  # every digits test image counted exactly once
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert {r["split"] for r in records} == {"train", "validation", "test"}
  train_steps = [r["step"] for r in records if r["split"] == "train"]
  assert train_steps == [8, 16, 24]
  assert all(np.isfinite(r["learning_rate"]) for r in records if r["split"] == "train")
  events = [os.path.join(workdir, "tensorboard", f)
            for f in os.listdir(os.path.join(workdir, "tensorboard"))]
  tags = set().union(*(read_event_tags(p) for p in events))
  assert {"train/loss", "train/accuracy", "validation/accuracy", "test/accuracy"} <= tags


def test_same_seed_gives_identical_metrics(finished_run, tmp_path, data_dir):
  _, first = finished_run
  second = loop.train_and_evaluate(small_config(data_dir), str(tmp_path / "again"))
  assert first["history"] == second["history"]
  assert first["test_loss"] == second["test_loss"]
  assert first["test_accuracy"] == second["test_accuracy"]


def test_other_seed_differs(finished_run, tmp_path, data_dir):
  _, first = finished_run
  other = loop.train_and_evaluate(small_config(data_dir, seed=1), str(tmp_path / "seed1"))
  assert other["history"] != first["history"]


def test_finished_run_is_not_rerun(finished_run):
  workdir, summary = finished_run
  config = small_config(json.load(open(os.path.join(workdir, "config.json")))["data_dir"])
  before = os.path.getmtime(os.path.join(workdir, "summary.json"))
  reprinted = loop.train_and_evaluate(config, workdir)
  assert reprinted["reprinted"] is True
  assert reprinted["test_accuracy"] == summary["test_accuracy"]
  assert os.path.getmtime(os.path.join(workdir, "summary.json")) == before


def test_workdir_of_another_config_is_refused(finished_run):
  workdir, _ = finished_run
  config = small_config(json.load(open(os.path.join(workdir, "config.json")))["data_dir"])
  config.optimizer.learning_rate = 0.5
  with pytest.raises(loop.RunError, match=r"optimizer\.learning_rate \(0\.003 -> 0\.5\)"):
    loop.train_and_evaluate(config, workdir)


def _tiny_state_and_batch():
  model = get_model("bn_cnn", num_classes=10)
  state = create_train_state(jax.random.key(0), model, optax.adam(1e-3), (8, 8, 1))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((16, 8, 8, 1), np.float32)),
           "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
  return state, batch


def test_train_step_compiles_once():
  state, batch = _tiny_state_and_batch()
  loss_fn = losses.for_classification("sparse_categorical_cross_entropy", num_classes=10)
  step = jax.jit(chex.assert_max_traces(
      lambda s, b, r: train_step(s, b, r, loss_fn=loss_fn), n=1))
  rng = jax.random.key(1)
  first = None
  for _ in range(5):
    state, metrics = step(state, batch, rng)
    first = metrics["loss"] if first is None else first
  assert int(state.step) == 5
  assert float(metrics["loss"]) < float(first)  # it learns the fixed batch


def test_microbatches_equal_one_batch_without_batchnorm():
  """Gradient accumulation over micro-batches is the same update (no BatchNorm involved)."""
  model = get_model("simple_cnn", num_classes=10)
  state = create_train_state(jax.random.key(0), model, optax.sgd(0.1), (32, 32, 3))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((8, 32, 32, 3), np.float32)),
           "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
  loss_fn = losses.for_classification("sparse_categorical_cross_entropy", num_classes=10)
  one, m1 = jax.jit(lambda s: train_step(s, batch, jax.random.key(0), loss_fn=loss_fn))(state)
  four, m4 = jax.jit(lambda s: train_step(s, batch, jax.random.key(0), loss_fn=loss_fn,
                                          microbatches=4))(state)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  chex.assert_trees_all_close(one.params, four.params, rtol=1e-5, atol=1e-6)


def test_grad_norm_and_nonfinite_flag():
  """grad_norm equals optax's global norm of the same gradients; one inf entry flags the step."""
  state, batch = _tiny_state_and_batch()
  loss_fn = losses.for_classification("sparse_categorical_cross_entropy", num_classes=10)

  def reference_grads(params):
    def objective(p):
      logits, _ = state.apply_fn({"params": p, "batch_stats": state.batch_stats}, batch["image"],
                                 train=True, mutable=["batch_stats"])
      return jnp.mean(loss_fn(logits, batch["label"]))
    return jax.grad(objective)(params)

  step = jax.jit(lambda s: train_step(s, batch, jax.random.key(0), loss_fn=loss_fn))
  _, metrics = step(state)
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(reference_grads(state.params)),
                             rtol=1e-5)
  assert float(metrics["nonfinite"]) == 0.0

  # An inf weight makes the loss and some gradients non-finite.
  leaves, treedef = jax.tree.flatten(state.params)
  leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.inf)
  _, metrics = step(state.replace(params=jax.tree.unflatten(treedef, leaves)))
  assert float(metrics["nonfinite"]) == 1.0


def test_checked_sum_of_squares():
  from cnnjax.training.steps import _checked_sum_of_squares as checked
  rng = np.random.default_rng(0)
  tree = {"w": rng.standard_normal((37, 5)).astype(np.float32), "b": np.float32([3.0, -4.0])}
  expected = sum(float(np.sum(np.float64(v) ** 2)) for v in tree.values())  # float64 reference
  np.testing.assert_allclose(float(checked(jax.tree.map(jnp.asarray, tree))), expected, rtol=1e-6)
  for bad in (np.inf, -np.inf, np.nan):
    w = tree["w"].copy()
    w[3, 2] = bad
    assert np.isnan(float(checked({"w": jnp.asarray(w), "b": jnp.asarray(tree["b"])})))
  # Finite but huge: the squared norm overflows to inf, which is not a non-finite gradient.
  assert float(checked({"w": jnp.full((4,), 1e30, jnp.float32)})) == np.inf


def test_auto_microbatches_rule():
  from cnnjax.training.steps import resolve_microbatches
  auto = lambda **kw: resolve_microbatches(0, **{
      "per_device_batch": 128, "has_batch_norm": False, "backend": "cpu", **kw})
  assert auto(num_params=122_570) == 2          # keras_cifar_cnn
  assert auto(num_params=3_274_634) == 1        # mnist_cnn: weights re-read per part cost more
  assert auto(num_params=1000, has_batch_norm=True) == 1
  assert auto(num_params=1000, backend="gpu") == 1
  assert auto(num_params=1000, per_device_batch=48) == 1   # halves of 24 are too small
  assert resolve_microbatches(4, per_device_batch=128, has_batch_norm=True, backend="cpu") == 4


def test_eval_step_counts_only_masked_in_examples():
  state, batch = _tiny_state_and_batch()
  loss_fn = losses.for_classification("sparse_categorical_cross_entropy", num_classes=10)
  mask = jnp.asarray([1.0] * 10 + [0.0] * 6)
  full = eval_step(state, {**batch, "mask": mask}, loss_fn=loss_fn, num_classes=10)
  sliced = eval_step(state, {"image": batch["image"][:10], "label": batch["label"][:10],
                             "mask": jnp.ones(10)}, loss_fn=loss_fn, num_classes=10)
  assert float(full["count"]) == 10
  np.testing.assert_allclose(full["loss_sum"], sliced["loss_sum"], rtol=1e-6)
  np.testing.assert_array_equal(full["confusion"], sliced["confusion"])
  assert float(full["confusion"].sum()) == 10


def test_eval_step_uses_plain_lax_ops_under_auto():
  """Evaluation takes no gradients: under "auto" it traces lax, not the hybrid formulation."""
  from cnnjax.models import fast_ops
  model = get_model("keras_cifar_cnn", num_classes=10)
  state = create_train_state(jax.random.key(0), model, optax.adam(1e-3), (32, 32, 3))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((4, 32, 32, 3), np.float32)),
           "label": jnp.asarray(rng.integers(0, 10, 4), jnp.int32), "mask": jnp.ones(4)}
  loss_fn = losses.for_classification("sparse_categorical_cross_entropy", num_classes=10)
  # A fresh function per trace: jax caches traces by function, not by the
  # fast_ops setting (which is read at trace time).
  evaluate = lambda: lambda s: eval_step(s, batch, loss_fn=loss_fn, num_classes=10)
  assert fast_ops.current_implementation() == "hybrid"  # CPU, auto
  assert "_hybrid_conv" not in str(jax.make_jaxpr(evaluate())(state))
  with fast_ops.implementation("hybrid"):  # an explicit choice is kept
    assert "_hybrid_conv" in str(jax.make_jaxpr(evaluate())(state))
    hybrid = evaluate()(state)
  np.testing.assert_allclose(evaluate()(state)["loss_sum"], hybrid["loss_sum"], rtol=1e-5)


def test_main_without_workdir_creates_a_timestamped_run(tmp_path, data_dir):
  """README command 1 passes no --workdir: the run goes to runs/<config>-<timestamp>."""
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": repo, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.main", "--config.num_train_steps=2",
       "--config.progress=none", f"--config.data_dir={data_dir}"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (run,) = os.listdir(tmp_path / "runs")
  assert run.startswith("default-")
  assert json.load(open(tmp_path / "runs" / run / "summary.json"))["status"] == "completed"
  assert "test accuracy" in proc.stdout
