"""The one pytree a training run updates."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from cnnjax import optimizers


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm statistics and an optional parameter EMA.

  ``ema_params`` is ``None`` unless ``ema_decay > 0``; evaluation then uses it.
  ``nonfinite_count`` counts updates skipped because a loss or gradient was
  not finite (only under ``on_nonfinite="skip"``).
  """

  batch_stats: Any = struct.field(pytree_node=True, default_factory=dict)
  ema_params: Any = None
  ema_decay: float = struct.field(pytree_node=False, default=0.0)
  nonfinite_count: jax.Array = struct.field(
      pytree_node=True, default_factory=lambda: jnp.zeros((), jnp.int32))

  def eval_params(self):
    return self.params if self.ema_params is None else self.ema_params


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """The two root keys of a run: one initialises the parameters, one drives training.

  Initialisation uses the "rbg" generator: on CPU its compiled init is ~3x
  cheaper to build than threefry's, which dominates start-up on small models.
  Training keeps threefry, whose values do not depend on how the computation is
  sharded, so results stay the same on any number of devices.
  """
  return jax.random.key(seed, impl="rbg"), jax.random.key(seed)


# An initializer runs once per run, so its compile time is all it costs: at LLVM level 1
# XLA:CPU builds bn_cnn's init 4x faster (5.4 -> 1.3 s with a threefry key) and, for
# every registered model, with the same bits as its default level (tests/test_training.py).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def make_initializer(
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    *,
    ema_decay: float = 0.0,
) -> Callable[[jax.Array], TrainState]:
  """``init(key) -> TrainState`` for ``model`` on a dummy batch of ``input_shape`` (H, W, C).

  Parameters and optimizer state are built in one jitted call, compiled once per
  initializer: run eagerly, every initializer and optimizer-state op would be compiled
  on its own, which costs more than compiling them together once. Runs that differ only
  in their seed (a study group) share one initializer, so their states also share the
  same ``apply_fn`` and ``tx`` and stack into one pytree.
  """

  @functools.partial(jax.jit, compiler_options=INIT_COMPILER_OPTIONS)
  def variables(key, learning_rate):
    v = model.init({"params": key, "dropout": key}, jnp.zeros((1, *input_shape), jnp.float32),
                   train=False)
    params = v["params"]
    opt_state = tx.init(params)
    if learning_rate is not None:
      opt_state = optimizers.set_learning_rate_scale(opt_state, learning_rate)
    return params, v.get("batch_stats", {}), opt_state, params if ema_decay > 0 else None

  def init(key: jax.Array, learning_rate: float | None = None) -> TrainState:
    """``learning_rate``: the run-time rate scale of a `cnnjax.optimizers` chain (see
    `cnnjax.training.build`), set inside the same compiled call; None leaves it at 1."""
    lr = None if learning_rate is None else jnp.float32(learning_rate)
    params, batch_stats, opt_state, ema_params = variables(key, lr)
    return TrainState(
        step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=params, tx=tx,
        opt_state=opt_state, batch_stats=batch_stats, ema_params=ema_params,
        ema_decay=float(ema_decay), nonfinite_count=jnp.zeros((), jnp.int32))

  return init


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    *,
    ema_decay: float = 0.0,
) -> TrainState:
  """Initialises ``model`` on a dummy batch of ``input_shape`` (see `make_initializer`)."""
  return make_initializer(model, tx, input_shape, ema_decay=ema_decay)(rng)


def num_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
