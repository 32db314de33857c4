"""A run's loss as a function of its parameters, for `cnnjax.curvature`.

`cnnjax.curvature` differentiates ``loss_fn: params -> scalar``; a run's loss also
depends on the batch, the BatchNorm statistics and dropout. This module fixes them, and
says which BatchNorm statistics it uses, through a required ``batch_stats_mode``:

* ``"train"``: the statistics of each training-size batch (``config.batch_size``
  consecutive examples of the given batch, each group normalised on its own, as BatchNorm's
  ghost batches) and a fixed dropout mask: the mean of the losses training computes on
  those batches. The running averages are read by nothing and left unchanged.
* ``"eval"``: the running averages and no dropout: the function the model computes at
  test time.

For a model without BatchNorm or dropout both modes are the same function. Nothing
switches the mode behind the caller's back (PyHessian, for one, always evaluates
BatchNorm in eval mode).

The model is the run's module with the ``"lax"`` formulation of `cnnjax.models.fast_ops`
by default: forward-mode differentiation (Hessian-vector products) needs JVP rules, and
the CPU-tuned formulations define only reverse-mode ones. Parameters and values are the
same.

Example::

  run = build_run(config)
  batch = {k: v[:256] for k, v in run.data.split_arrays("train").items()}
  loss_fn = loss_function(run, run.state, batch, batch_stats_mode="train")
  sharpness = curvature.top_eigenvalues(loss_fn, run.state.params, k=1,
                                        num_iterations=20, key=jax.random.key(0))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cnnjax import config as config_lib
from cnnjax.data import pipeline
from cnnjax.training.build import Run

BatchLoss = Callable[[Any, Any, dict[str, jax.Array]], jax.Array]  # (params, stats, batch)

# The dropout mask of the "train" mode is drawn from this key (per group), so the loss is
# one deterministic function of the parameters.
DROPOUT_KEY = 0


def curvature_model(run: Run, *, implementation: str = "lax", bn_ghost_batches: int | None = None):
  """The run's module for curvature: ``implementation``, BatchNorm without a device axis.

  Under ``pmap`` with ``bn_sync="global"`` training averages the statistics over the
  devices' shares: over one whole training batch, which is what a single call on that
  batch computes. ``bn_ghost_batches`` overrides the module's ghost batches (e.g. the
  device count, for ``pmap`` with ``bn_sync="per_device"``).
  """
  fields = {f.name for f in dataclasses.fields(type(run.model))}
  changes: dict[str, Any] = {"implementation": implementation}
  if "bn_axis_name" in fields:
    changes["bn_axis_name"] = None
    if bn_ghost_batches is not None:
      changes["bn_ghost_batches"] = int(bn_ghost_batches)
  return run.model.clone(**changes)


def batch_outputs(run: Run, *, batch_stats_mode: str, group_size: int | None = None,
                  implementation: str = "lax", bn_ghost_batches: int | None = None):
  """``(params, batch_stats, images [N, ...]) -> outputs [N, ...]`` in ``batch_stats_mode``.

  Args:
    run: the `cnnjax.training.build.Run`.
    batch_stats_mode: ``"train"`` or ``"eval"`` (module docstring).
    group_size: ``"train"`` mode: examples per BatchNorm batch (default
      ``config.batch_size``); it must divide ``N``. Ignored in ``"eval"`` mode.
    implementation: the `fast_ops` formulation (``"lax"`` for Hessian-vector products).
    bn_ghost_batches: see `curvature_model`.

  Raises:
    ValueError: an unknown ``batch_stats_mode``.
  """
  config_lib.check_choice("batch_stats_mode", batch_stats_mode, config_lib.BATCH_STATS_MODES)
  model = curvature_model(run, implementation=implementation, bn_ghost_batches=bn_ghost_batches)
  group = group_size or run.config.batch_size

  def variables(params, batch_stats):
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}

  def eval_outputs(params, batch_stats, images):
    return model.apply(variables(params, batch_stats), images, train=False)

  def train_outputs(params, batch_stats, images):
    size = images.shape[0]
    if size % group:
      raise ValueError(f"batch of {size} examples does not split into BatchNorm batches of "
                       f"{group} (batch_stats_mode='train')")
    rngs = {"dropout": jax.random.key(DROPOUT_KEY)}
    if not batch_stats:  # no BatchNorm: examples do not interact
      return model.apply(variables(params, batch_stats), images, train=True, rngs=rngs)
    # Each training-size group keeps its own statistics: BatchNorm's ghost batches (one
    # reshape per layer), the way a sharded step normalises per-device shares.
    ghost = model.clone(bn_ghost_batches=size // group * model.bn_ghost_batches)
    return ghost.apply(variables(params, batch_stats), images, train=True,
                       mutable=["batch_stats"], rngs=rngs)[0]

  return train_outputs if batch_stats_mode == "train" else eval_outputs


def batch_loss(run: Run, **options) -> BatchLoss:
  """``(params, batch_stats, batch) -> scalar``: the run's mean loss on ``batch``.

  With equal groups this is also the mean of the training-size batches' losses.
  ``options``: those of `batch_outputs` (``batch_stats_mode`` is required).
  """
  outputs = batch_outputs(run, **options)

  def loss(params, batch_stats, batch):
    return jnp.mean(run.loss_fn(outputs(params, batch_stats, batch["image"]), batch))

  return loss


def batch_sums(run: Run, **options) -> Callable[..., dict[str, jax.Array]]:
  """``(params, batch_stats, batch) -> sums``: ``loss_sum``, ``count`` and the task's
  evaluation sums over every example of ``batch`` (finalize with ``run.task.finalize``)."""
  outputs = batch_outputs(run, **options)

  def sums(params, batch_stats, batch):
    out = outputs(params, batch_stats, batch["image"])
    full = {**batch, pipeline.EVAL_MASK: jnp.ones(out.shape[:1], jnp.float32)}
    return {"loss_sum": jnp.sum(run.loss_fn(out, full)), "count": jnp.float32(out.shape[0]),
            **run.task.eval_sums(out, full)}

  return sums


def loss_function(run: Run, state, batch: dict[str, jax.Array], *, batch_stats_mode: str,
                  **options) -> Callable[[Any], jax.Array]:
  """``params -> scalar``: the run's loss on ``batch`` with ``state``'s BatchNorm statistics.

  The input of every `cnnjax.curvature` function, to be taken at ``state.params`` (the
  trained parameters, not an EMA of them). ``options``: those of `batch_outputs`.
  """
  loss = batch_loss(run, batch_stats_mode=batch_stats_mode, **options)
  stats = state.batch_stats
  return lambda params: loss(params, stats, batch)
