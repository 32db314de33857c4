"""The one pytree a training run updates."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state


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


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    *,
    ema_decay: float = 0.0,
) -> TrainState:
  """Initialises ``model`` on a dummy batch of ``input_shape`` (H, W, C).

  Initialisation runs un-jitted: on CPU a jitted init of a small CNN costs
  seconds of compilation for a function called once.
  """
  variables = model.init(
      {"params": rng, "dropout": rng}, jnp.zeros((1, *input_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState.create(
      apply_fn=model.apply,
      params=params,
      tx=tx,
      batch_stats=variables.get("batch_stats", {}),
      ema_params=jax.tree.map(jnp.copy, params) if ema_decay > 0 else None,
      ema_decay=float(ema_decay),
  )


def num_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
