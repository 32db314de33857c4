"""End-to-end training on the embedded digits data, and properties of the pure steps."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import config as config_lib
from cnnjax import tasks
from cnnjax.data import catalog
from cnnjax.models import fast_ops, get_model
from cnnjax.training import build, create_train_state, eval_step, loop, train_step
from experiments.configs import default as default_config

TASK = tasks.get_task("classification", catalog.dataset_info("digits"))
CE = config_lib.get_config().loss  # sparse categorical cross-entropy, no options
LOSS = TASK.make_loss(CE)


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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("run"))
  summary = loop.train_and_evaluate(small_config(data_dir), workdir)
  return workdir, summary


def test_run_writes_every_output(finished_run, read_event_tags):
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
  # tiny_cnn: bn_cnn's layers (conv, BatchNorm, ReLU, pooling, dense), one conv per stage.
  model = get_model("tiny_cnn", num_classes=10)
  state = create_train_state(jax.random.key(0), model, optax.adam(1e-3), (8, 8, 1))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((16, 8, 8, 1), np.float32)),
           "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
  return state, batch


def test_train_step_compiles_once():
  state, batch = _tiny_state_and_batch()
  step = jax.jit(chex.assert_max_traces(
      lambda s, b, r: train_step(s, b, r, task=TASK, loss_fn=LOSS), n=1))
  rng = jax.random.key(1)
  first = None
  for _ in range(5):
    state, metrics = step(state, batch, rng)
    first = metrics["loss"] if first is None else first
  assert int(state.step) == 5
  assert float(metrics["loss"]) < float(first)  # it learns the fixed batch
  assert set(metrics) == {"loss", "accuracy", "grad_norm", "learning_rate", "nonfinite"}


def test_microbatches_equal_one_batch_without_batchnorm():
  """Gradient accumulation over micro-batches is the same update (no BatchNorm involved)."""
  model = get_model("lenet5", num_classes=10)
  state = create_train_state(jax.random.key(0), model, optax.sgd(0.1), (12, 12, 1))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((8, 12, 12, 1), np.float32)),
           "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
  step = lambda s, m: train_step(s, batch, jax.random.key(0), task=TASK, loss_fn=LOSS,
                                 microbatches=m)
  one, m1 = jax.jit(lambda s: step(s, 1))(state)
  four, m4 = jax.jit(lambda s: step(s, 4))(state)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  np.testing.assert_allclose(m1["accuracy"], m4["accuracy"], rtol=1e-6)
  chex.assert_trees_all_close(one.params, four.params, rtol=1e-5, atol=1e-6)


def test_grad_norm_and_nonfinite_flag():
  """grad_norm equals optax's global norm of the same gradients; one inf entry flags the step."""
  state, batch = _tiny_state_and_batch()

  @jax.jit
  def reference_grads(params):
    def objective(p):
      logits, _ = state.apply_fn({"params": p, "batch_stats": state.batch_stats}, batch["image"],
                                 train=True, mutable=["batch_stats"])
      return jnp.mean(LOSS(logits, batch))
    return jax.grad(objective)(params)

  step = jax.jit(lambda s: train_step(s, batch, jax.random.key(0), task=TASK, loss_fn=LOSS))
  _, metrics = step(state)
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(reference_grads(state.params)),
                             rtol=1e-5)
  assert float(metrics["nonfinite"]) == 0.0

  # An inf weight makes the loss and some gradients non-finite.
  leaves, treedef = jax.tree.flatten(state.params)
  leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.inf)
  _, metrics = step(state.replace(params=jax.tree.unflatten(treedef, leaves)))
  assert float(metrics["nonfinite"]) == 1.0


def test_skip_nonfinite_keeps_the_state_and_counts():
  """on_nonfinite="skip": a non-finite step leaves params, statistics and optimizer state
  (so the schedule too) as they were, advances the step and counts it."""
  state, batch = _tiny_state_and_batch()
  bad = {**batch, "image": batch["image"].at[0, 0, 0, 0].set(jnp.nan)}
  step = jax.jit(lambda s, b: train_step(s, b, jax.random.key(0), task=TASK, loss_fn=LOSS,
                                         skip_nonfinite=True))
  skipped, metrics = step(state, bad)
  assert float(metrics["nonfinite"]) == 1.0
  chex.assert_trees_all_equal((skipped.params, skipped.batch_stats, skipped.opt_state),
                              (state.params, state.batch_stats, state.opt_state))
  assert int(skipped.step) == 1 and int(skipped.nonfinite_count) == 1
  good, metrics = step(skipped, batch)
  assert float(metrics["nonfinite"]) == 0.0 and int(good.nonfinite_count) == 1
  assert not np.allclose(jax.tree.leaves(good.params)[0], jax.tree.leaves(state.params)[0])


def test_checked_sum_of_squares():
  from cnnjax.training.steps import checked_sum_of_squares as checked
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


@pytest.mark.parametrize("name,shape", [("tiny_cnn", (8, 8, 1)), ("bn_cnn", (8, 8, 1)),
                                        ("lenet5", (28, 28, 1)), ("resnet20", (32, 32, 3)),
                                        ("unet_small", (16, 16, 1)), ("seq_reader", (8, 24, 1))])
def test_initializer_has_the_bits_of_a_default_compile(name, shape):
  """The initializer is compiled at a lower LLVM level (`state.INIT_COMPILER_OPTIONS`) to
  build faster; parameters, statistics and optimizer state must still be bit for bit what
  XLA's default level computes (a plain `jax.jit` of `model.init` + `tx.init`)."""
  from cnnjax.training import state as state_lib
  num_classes = 12 if name == "seq_reader" else 10
  model, tx = get_model(name, num_classes=num_classes), optax.adam(1e-3)
  key = state_lib.run_keys(3)[0]
  ours = state_lib.make_initializer(model, tx, shape)(key)

  @jax.jit
  def reference(k):
    v = model.init({"params": k, "dropout": k}, jnp.zeros((1, *shape), jnp.float32),
                   train=False)
    return v["params"], v.get("batch_stats", {}), tx.init(v["params"])

  for a, b in zip(jax.tree.leaves((ours.params, ours.batch_stats, ours.opt_state)),
                  jax.tree.leaves(reference(key)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eval_step_counts_only_masked_in_examples():
  state, batch = _tiny_state_and_batch()
  mask = jnp.asarray([1.0] * 10 + [0.0] * 6)
  # Jitted: op-by-op, the fast_ops formulations cost seconds of dispatch per call.
  evaluate = jax.jit(lambda s, b: eval_step(s, b, task=TASK, loss_fn=LOSS))
  full = evaluate(state, {**batch, "mask": mask})
  sliced = evaluate(state, {"image": batch["image"][:10], "label": batch["label"][:10],
                            "mask": jnp.ones(10)})
  assert float(full["count"]) == 10
  np.testing.assert_allclose(full["loss_sum"], sliced["loss_sum"], rtol=1e-6)
  np.testing.assert_array_equal(full["confusion"], sliced["confusion"])
  assert float(full["confusion"].sum()) == 10
  assert float(full["correct"]) == float(np.trace(full["confusion"]))


@pytest.fixture(scope="module")
def keras_runs(data_dir):
  """build_run of a model whose training formulation on CPU is the hybrid one."""
  from cnnjax.data import pipeline
  info = catalog.DatasetInfo("cifar10", (32, 32, 3), 10)
  rng = np.random.default_rng(0)
  arrays = (rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 8))
  data = pipeline.Dataset(info, arrays, arrays, batch_size=4, eval_batch_size=4)
  config = config_lib.get_config()
  config.model, config.dataset, config.validation_fraction = "keras_cifar_cnn", "cifar10", 0.0
  return {impl: build.build_run(config, data=data, implementation=impl)
          for impl in ("auto", "hybrid")}


def test_evaluation_traces_plain_lax_under_auto(keras_runs):
  """Evaluation takes no gradients: under "auto" its model is the lax formulation, an
  explicit choice is kept, and both give the same sums."""
  auto, hybrid = keras_runs["auto"], keras_runs["hybrid"]
  assert auto.model.implementation == fast_ops.resolve("auto")
  assert auto.eval_model.implementation == "lax"
  assert hybrid.eval_model.implementation == "hybrid"
  batch = next(auto.data.eval_batches("test"))
  assert "_hybrid_conv" not in str(jax.make_jaxpr(auto.eval_step())(auto.state, batch))
  assert "_hybrid_conv" in str(jax.make_jaxpr(hybrid.eval_step())(hybrid.state, batch))
  np.testing.assert_allclose(auto.eval_step()(auto.state, batch)["loss_sum"],
                             hybrid.eval_step()(hybrid.state, batch)["loss_sum"], rtol=1e-5)


def test_build_run_keeps_the_rate_in_the_optimizer_state(keras_runs):
  """The schedule is built for a rate of 1 and the state carries the configured rate, so the
  first update equals that of the optimizer built with the rate itself."""
  from cnnjax import optimizers
  run = keras_runs["auto"]
  assert run.learning_rate == 1e-3  # adam's default (the schema leaves it unset)
  assert float(optimizers.learning_rate(run.state.opt_state)) == np.float32(1e-3)
  direct = optimizers.make_optimizer(run.config.optimizer, run.total_steps)
  grads = jax.tree.map(jnp.ones_like, run.state.params)
  ours, _ = run.unit_rate_tx.update(grads, run.state.opt_state, run.state.params)
  theirs, _ = direct.update(grads, direct.init(run.state.params), run.state.params)
  chex.assert_trees_all_equal(ours, theirs)


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


def test_a_tie_keeps_the_best_epoch_the_summary_names(tmp_path, data_dir):
  """A rate so small (and no BatchNorm statistics) that validation accuracy cannot change:
  every epoch ties. The summary names the first epoch as best, and that epoch's checkpoint
  is the one kept."""
  config = small_config(data_dir, num_train_steps=0, num_epochs=3, batch_size=128,
                        keep_checkpoints=1, checkpoint_every_seconds=0.0)
  config.model = "simple_cnn"
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 1e-12
  config.optimizer.schedule, config.optimizer.weight_decay = "constant", 0.0
  summary = loop.train_and_evaluate(config, str(tmp_path))
  values = [h["val_accuracy"] for h in summary["history"]]
  assert len(set(values)) == 1, values
  assert summary["best_epoch"] == 1 and summary["best_val_accuracy"] == values[0]
  first_epoch_step = summary["history"][0]["step"]
  kept = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
  assert kept == [first_epoch_step, summary["steps"]], kept
