"""SAM (optimizer.name="sam"): the update of Foret et al. (2021), and BatchNorm statistics
updated once per step. References are the paper's two-step formula written out here."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import config as config_lib
from cnnjax import optimizers
from cnnjax.training import build


def sam_section(**overrides):
  section = config_lib.get_config().optimizer
  section.name, section.sam_base, section.learning_rate, section.rho = "sam", "sgd", 0.1, 0.05
  for key, value in overrides.items():
    section[key] = value
  return section


def test_sam_update_is_the_two_step_formula():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(8, 3)), rng.normal(size=8)
  w = rng.normal(size=3)
  grad = lambda v: 2 * x.T @ (x @ v - y) / len(y)     # of mean((x v - y)^2), by hand
  tx = optimizers.make_optimizer(sam_section(), total_steps=10)
  params = jnp.asarray(w, jnp.float32)
  state = tx.init(params)
  assert optimizers.needs_grad_fn(state)
  g0 = jnp.asarray(grad(w), jnp.float32)
  updates, state = tx.update(g0, state, params,
                             grad_fn=lambda p, _: jnp.asarray(grad(np.asarray(p)), jnp.float32))
  ascent = w + 0.05 * grad(w) / np.linalg.norm(grad(w))
  np.testing.assert_allclose(optax.apply_updates(params, updates), w - 0.1 * grad(ascent),
                             rtol=1e-5)
  assert float(optimizers.learning_rate(state)) == pytest.approx(0.1)
  assert not optimizers.needs_grad_fn(optimizers.make_optimizer(
      config_lib.get_config().optimizer, 10).init(params))


@pytest.mark.parametrize("overrides,message", [
    ({"sam_base": "sam"}, "optimizer.sam_base='sam' is not an optimizer SAM can wrap"),
    ({"rho": 0.0}, "optimizer.rho=0.0 must be > 0"),
    ({"grad_accum_steps": 2}, "must be 1 with name='sam'"),
    ({"b1": 0.5}, "optimizer.b1=0.5 is not used by optimizer 'sgd'"),
])
def test_bad_sam_settings_are_refused(overrides, message):
  with pytest.raises(ValueError, match=message):
    optimizers.validate(sam_section(**overrides))


def test_sam_train_step_updates_batchnorm_statistics_once(data_dir):
  config = config_lib.get_config()
  config.data_dir, config.model, config.batch_size, config.num_train_steps = (
      data_dir, "tiny_cnn", 16, 4)
  config.optimizer = sam_section()
  config_lib.validate(config)
  run = build.build_run(config)
  batch = next(run.data.train_batches(0))
  state = run.state
  new_state, _ = jax.jit(run.train_step())(jax.tree.map(jnp.copy, state), batch, run.train_rng)

  def forward(params, stats):
    logits, updates = run.model.apply({"params": params, "batch_stats": stats}, batch["image"],
                                      train=True, mutable=["batch_stats"])
    return jnp.mean(run.loss_fn(logits, batch)), updates["batch_stats"]

  forward_backward = jax.jit(jax.value_and_grad(forward, has_aux=True))
  (_, once), g0 = forward_backward(state.params, state.batch_stats)
  norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(g0)))
  ascent = jax.tree.map(lambda p, g: p + 0.05 * g / norm, state.params, g0)
  (_, twice), g1 = forward_backward(ascent, once)
  close = lambda a, b: all(np.allclose(u, v, rtol=1e-5, atol=1e-6)
                           for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  # The statistics moved once (from the pass at w), not again at w + eps.
  assert close(new_state.batch_stats, once)
  assert not close(new_state.batch_stats, twice)
  # The parameters took the SAM step: w - lr * grad(w + eps).
  assert close(new_state.params, jax.tree.map(lambda p, g: p - 0.1 * g, state.params, g1))
