"""The state and pure steps of adversarial training: a generator and a discriminator.

`GANState` holds one `TrainState` per network, each with its own optax chain (the
generator's from ``config.optimizer``, the discriminator's from
``config.gan.discriminator_optimizer``). `train_step` makes one update of each, in the
order of Goodfellow et al.'s Algorithm 1 with k = 1 (the PyTorch DCGAN example's too):

1. ``fake = G(z)`` once, keeping its VJP;
2. the discriminator descends its loss on ``(D(real), D(fake))`` (fake held constant),
   plus the R1 penalty when the loss asks for it (the gradient of D's score with
   respect to each real input, a second-order term; when no loss of the program uses it,
   XLA drops its computation);
3. the generator descends its loss on the *updated* discriminator's ``D(fake)``, by the
   chain rule through step 1's VJP.

The loss is ``loss_fn(outputs, batch) -> {"discriminator": [B], "generator": [B], "r1":
[B]}`` with ``outputs = {"real": D(real) [B], "fake": D(fake) [B], "real_grad": dD/dreal
[B, H, W, C]}`` (`cnnjax.tasks.generation.Generation.make_loss`); each network takes the
mean of its part.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from cnnjax import optimizers
from cnnjax.training.state import INIT_COMPILER_OPTIONS, TrainState
from cnnjax.training.steps import checked_sum_of_squares

GanLoss = Callable[[dict[str, jax.Array], Any], dict[str, jax.Array]]


class GANState(struct.PyTreeNode):
  """Both networks' train states and the shared step counter."""
  step: jax.Array
  generator: TrainState
  discriminator: TrainState
  nonfinite_count: jax.Array

  @property
  def params(self):
    return {"generator": self.generator.params, "discriminator": self.discriminator.params}

  @property
  def batch_stats(self):
    return self.generator.batch_stats

  def eval_params(self):
    return self.generator.eval_params()


def generate(apply_fn: Callable, params, batch_stats, z: jax.Array, *, train: bool):
  """``(images, new BatchNorm statistics)`` of the generator (``new = old`` unless train)."""
  variables = {"params": {"generator": params}, "batch_stats": {"generator": batch_stats}}
  if not train:
    return apply_fn(variables, z, train=False), batch_stats
  images, updates = apply_fn(variables, z, train=True, mutable=["batch_stats"])
  return images, updates["batch_stats"]["generator"]


def discriminate(apply_fn: Callable, params, images: jax.Array) -> jax.Array:
  """The discriminator's raw scores ``[N]``."""
  return apply_fn({"params": {"discriminator": params}}, images, method="discriminate")


def make_initializer(model: nn.Module, g_tx: optax.GradientTransformation,
                     d_tx: optax.GradientTransformation, image_shape: tuple[int, ...], *,
                     discriminator_learning_rate: float, ema_decay: float = 0.0) -> Callable:
  """``init(key, learning_rate) -> GANState``; ``learning_rate`` is the generator's.

  Both optimizers are built for a rate of 1 and carry their rates in their states
  (`cnnjax.training.build`); ``ema_decay > 0`` keeps an EMA of the generator's parameters,
  which evaluation then uses (Yazici et al. 2019).
  """

  @functools.partial(jax.jit, compiler_options=INIT_COMPILER_OPTIONS)
  def variables(key, g_lr):
    v = model.init({"params": key}, jnp.zeros((1, model.latent_dim)),
                   jnp.zeros((1, *image_shape)), method="initialize")
    g, d = v["params"]["generator"], v["params"]["discriminator"]
    g_opt = optimizers.set_learning_rate_scale(g_tx.init(g), g_lr)
    d_opt = optimizers.set_learning_rate_scale(d_tx.init(d),
                                               jnp.float32(discriminator_learning_rate))
    # Every counter its own output (own buffer): the train step donates the whole state.
    counters = [jnp.zeros((), jnp.int32) for _ in range(6)]
    return (g, d, v["batch_stats"]["generator"], g_opt, d_opt,
            g if ema_decay > 0 else None, counters)

  def init(key: jax.Array, learning_rate: float = 1.0) -> GANState:
    g, d, stats, g_opt, d_opt, ema, c = variables(key, jnp.float32(learning_rate))
    return GANState(
        step=c[0], nonfinite_count=c[1],
        generator=TrainState(step=c[2], apply_fn=model.apply, params=g, tx=g_tx, opt_state=g_opt,
                             batch_stats=stats, ema_params=ema, ema_decay=float(ema_decay),
                             nonfinite_count=c[3]),
        discriminator=TrainState(step=c[4], apply_fn=model.apply, params=d, tx=d_tx,
                                 opt_state=d_opt, batch_stats={}, nonfinite_count=c[5]))

  return init


def with_learning_rate_scales(state: GANState, generator_rate: float,
                              discriminator_rate: float) -> GANState:
  """``state`` with both optimizers' run-time rates set (a rollback scales both)."""
  g, d = state.generator, state.discriminator
  return state.replace(
      generator=g.replace(opt_state=optimizers.set_learning_rate_scale(g.opt_state,
                                                                       generator_rate)),
      discriminator=d.replace(opt_state=optimizers.set_learning_rate_scale(
          d.opt_state, discriminator_rate)))


def _discriminator_update(d: TrainState, real, fake, batch, loss_fn: GanLoss, axis_name):
  b = real.shape[0]

  def objective(params):
    scores, vjp = jax.vjp(lambda x: discriminate(d.apply_fn, params, x),
                          jnp.concatenate([real, fake]))
    # One backward pass of the scores of the real half gives every real example's
    # gradient (the discriminator has no cross-example layer).
    real_grad = vjp(jnp.concatenate([jnp.ones((b,)), jnp.zeros((b,))]))[0][:b]
    losses = loss_fn({"real": scores[:b], "fake": scores[b:], "real_grad": real_grad}, batch)
    return jnp.mean(losses["discriminator"]), (scores, losses["r1"])

  (loss, (scores, r1)), grads = jax.value_and_grad(objective, has_aux=True)(d.params)
  if axis_name is not None:
    grads = lax.pmean(grads, axis_name)
  return d.apply_gradients(grads=grads), grads, loss, scores, jnp.mean(r1)


def train_step(state: GANState, batch: dict[str, jax.Array], rng: jax.Array, *,
               loss_fn: GanLoss, latent_dim: int, axis_name: str | None = None,
               skip_nonfinite: bool = False) -> tuple[GANState, dict[str, jax.Array]]:
  """One discriminator update, then one generator update, on ``batch = {"image": real}``.

  Returns the new state and scalar metrics: ``loss`` (discriminator + generator, the
  value the non-finite policy watches), ``d_loss``, ``g_loss``, ``d_real`` and
  ``d_fake`` (mean scores before the updates), ``r1`` (mean penalty), ``grad_norm``
  (both networks), ``learning_rate`` (the generator's) and ``nonfinite``.
  """
  rng = jax.random.fold_in(rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
  real = batch["image"]
  g = state.generator
  z = jax.random.normal(rng, (real.shape[0], latent_dim))
  fake, g_vjp, new_stats = jax.vjp(
      lambda p: generate(g.apply_fn, p, g.batch_stats, z, train=True), g.params, has_aux=True)
  d, d_grads, d_loss, scores, r1 = _discriminator_update(
      state.discriminator, real, lax.stop_gradient(fake), batch, loss_fn, axis_name)

  def generator_objective(images):
    out = {"real": lax.stop_gradient(scores[:real.shape[0]]),
           "fake": discriminate(d.apply_fn, d.params, images), "real_grad": jnp.zeros_like(real)}
    return jnp.mean(loss_fn(out, batch)["generator"])

  g_loss, fake_grad = jax.value_and_grad(generator_objective)(fake)
  (g_grads,) = g_vjp(fake_grad)
  if axis_name is not None:
    g_grads, new_stats = lax.pmean((g_grads, new_stats), axis_name)
    d_loss, g_loss, scores, r1 = lax.pmean((d_loss, g_loss, scores, r1), axis_name)
  new_g = g.apply_gradients(grads=g_grads, batch_stats=new_stats)
  if g.ema_params is not None:
    new_g = new_g.replace(ema_params=jax.tree.map(
        lambda e, p: g.ema_decay * e + (1.0 - g.ema_decay) * p, g.ema_params, new_g.params))
  sum_sq = checked_sum_of_squares(d_grads) + checked_sum_of_squares(g_grads)
  finite = jnp.isfinite(d_loss + g_loss) & ~jnp.isnan(sum_sq)
  new_state = state.replace(step=state.step + 1, generator=new_g, discriminator=d)
  if skip_nonfinite:
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    new_state = new_state.replace(step=state.step + 1, nonfinite_count=state.nonfinite_count
                                  + (~finite).astype(jnp.int32))
  b = real.shape[0]
  return new_state, {
      "loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss,
      "d_real": jnp.mean(scores[:b]), "d_fake": jnp.mean(scores[b:]), "r1": r1,
      "grad_norm": jnp.sqrt(sum_sq), "learning_rate": optimizers.learning_rate(g.opt_state),
      "nonfinite": (~finite).astype(jnp.float32),
  }


def latents(key: jax.Array, index: jax.Array, latent_dim: int) -> jax.Array:
  """``[N, latent_dim]`` latent vectors, row i a function of ``key`` and ``index[i]`` only."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (latent_dim,)))(index)
