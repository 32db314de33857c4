"""Pure train and eval steps, written against a `cnnjax.tasks.Task`. Side effects live in `loop.py`.

`train_step` and `eval_step` are written once for every parallel mode: under
`jax.pmap` they receive ``axis_name`` and average with `lax.pmean`; under a
sharded `jax.jit` the batch is one global array and XLA inserts the collectives.
They never look at a label: the task's loss and metric functions do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from cnnjax import optimizers
from cnnjax.tasks import Task, TaskLoss
from cnnjax.training.state import TrainState

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]  # (key, image [H, W, C]) -> image


def _example_keys(rng: jax.Array, batch_size: int, axis_name: str | None) -> jax.Array:
  """One key per example, derived from the example's index in the *global* batch.

  Keying on the global index (not the device) makes augmentation identical
  whatever the number of devices the batch is split over.
  """
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * batch_size
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(offset + jnp.arange(batch_size))


def _forward_backward(state: TrainState, batch_stats, batch, dropout_rng, task: Task,
                      loss_fn: TaskLoss):
  """Loss, task metrics, gradients and new BatchNorm statistics for one (micro-)batch."""

  def objective(p):
    variables = {"params": p}
    if batch_stats:
      variables["batch_stats"] = batch_stats
      outputs, updates = state.apply_fn(variables, batch["image"], train=True,
                                        mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      new_stats = updates["batch_stats"]
    else:
      outputs = state.apply_fn(variables, batch["image"], train=True,
                               rngs={"dropout": dropout_rng})
      new_stats = batch_stats
    return jnp.mean(loss_fn(outputs, batch)), (outputs, new_stats)

  (loss, (outputs, new_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  return loss, task.train_metrics(outputs, batch), grads, new_stats


def _accumulated(state, batch, dropout_rng, task, loss_fn, microbatches: int):
  """`_forward_backward` over ``microbatches`` equal parts, gradients and metrics averaged."""
  size = jax.tree.leaves(batch)[0].shape[0]
  if size % microbatches:
    raise ValueError(
        f"Per-device batch ({size}) must be divisible by microbatches ({microbatches})")
  parts = jax.tree.map(lambda x: x.reshape(microbatches, -1, *x.shape[1:]), batch)

  def body(carry, xs):
    grad_sum, stats, loss_sum, metric_sums = carry
    part, i = xs
    loss, metrics, grads, stats = _forward_backward(
        state, stats, part, jax.random.fold_in(dropout_rng, i), task, loss_fn)
    return (jax.tree.map(jnp.add, grad_sum, grads), stats, loss_sum + loss,
            jax.tree.map(jnp.add, metric_sums, metrics)), None

  zero_metrics = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(
      lambda: _forward_backward(state, state.batch_stats,
                                jax.tree.map(lambda x: x[0], parts), dropout_rng, task,
                                loss_fn)[1]))
  init = (jax.tree.map(jnp.zeros_like, state.params), state.batch_stats, jnp.zeros(()),
          zero_metrics)
  (grad_sum, new_stats, loss_sum, metric_sums), _ = lax.scan(
      body, init, (parts, jnp.arange(microbatches)))
  average = lambda x: x / microbatches
  return (average(loss_sum), jax.tree.map(average, metric_sums),
          jax.tree.map(average, grad_sum), new_stats)


def checked_sum_of_squares(grads) -> jax.Array:
  """Sum over every gradient entry of g * (g + g*0), one pass over the gradients.

  g + g*0 is g when g is finite and NaN for +-inf or NaN, and a sum of finite
  squares can overflow to inf but never becomes NaN; so the result is NaN
  exactly when some gradient entry is not finite, and otherwise the squared
  global norm. Written as a dot product: XLA then reads g once, where a
  reduction of g*g shares g*g with Adam's second moment and writes it out
  first (mnist_cnn, one core: 5.0 -> 1.1 ms per step; 2 cores, same process,
  alternating windows: 1,925-1,940 -> 1,964-1,974 images/s).

  Examples:
    >>> float(checked_sum_of_squares({"a": jnp.array([3.0, -4.0])}))
    25.0
    >>> bool(jnp.isnan(checked_sum_of_squares({"a": jnp.array([1.0, -jnp.inf])})))
    True
  """
  def one(g):
    g = g.astype(jnp.float32).ravel()
    return jnp.vdot(g, g + g * 0)
  return functools.reduce(jnp.add, [one(g) for g in jax.tree.leaves(grads)],
                          jnp.zeros((), jnp.float32))


# Auto micro-batching stops at this many parameters: each part re-reads every
# weight, and for mnist_cnn's 3.3M parameters (13 MB, mostly one dense layer)
# that costs more than the smaller parts gain.
MICROBATCH_MAX_PARAMS = 1_000_000


def resolve_microbatches(requested: int, *, per_device_batch: int, has_batch_norm: bool,
                         backend: str, num_params: int = 0) -> int:
  """How many parts a step splits its batch into (a CPU speed lever); ``requested=0`` = auto.

  Auto splits only on CPU, only models without BatchNorm (whose update does
  not depend on the split, up to float32 rounding) and with fewer than
  `MICROBATCH_MAX_PARAMS` parameters: in two when both halves keep >= 32
  examples. Measured on the 2-core CPU at batch 128 with the default
  "hybrid" fast_ops (docs/performance.md): keras_cifar_cnn (122,570
  parameters) 3,608 / 4,094 images/s with 1 / 2 parts (earlier: 3,990 with 4,
  3,545 with 8); mnist_cnn (3.27M) 1,927 / 1,809 with 1 / 2 parts. Not a config
  key: gradient accumulation across batches is ``optimizer.grad_accum_steps``.
  """
  if requested > 0:
    return requested
  if backend != "cpu" or has_batch_norm or num_params >= MICROBATCH_MAX_PARAMS:
    return 1
  if per_device_batch % 2 == 0 and per_device_batch // 2 >= 32:
    return 2
  return 1


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    task: Task,
    loss_fn: TaskLoss,
    augment_fn: AugmentFn | None = None,
    microbatches: int = 1,
    axis_name: str | None = None,
    skip_nonfinite: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on ``batch`` = {image [B, H, W, C], the task's fields}.

  Args:
    state: the current train state.
    batch: this device's share of the global batch.
    rng: the run's root key; the step's key is ``fold_in(rng, state.step)``.
    task: says which metrics accompany the loss (`Task.train_metrics`).
    loss_fn: per-example loss ``(outputs, batch) -> [B]`` (`Task.make_loss`),
      reduced here with a plain mean.
    augment_fn: per-example image augmentation, or None.
    microbatches: split the batch into this many equal parts whose gradients
      are averaged inside the step (same update for models without BatchNorm,
      up to rounding; a speed lever on CPU).
    axis_name: the `pmap` axis to average gradients and metrics over.
    skip_nonfinite: keep the old state when the loss or a gradient is not
      finite, and count the event in ``state.nonfinite_count``.

  Returns:
    The new state and scalar metrics: loss, the task's training metrics,
    grad_norm, learning_rate, nonfinite (1.0 when this step's update was not finite).
  """
  rng = jax.random.fold_in(rng, state.step)
  aug_rng, dropout_rng = jax.random.split(rng)
  if augment_fn is not None:
    keys = _example_keys(aug_rng, batch["image"].shape[0], axis_name)
    batch = {**batch, "image": jax.vmap(augment_fn)(keys, batch["image"])}
  if axis_name is not None:
    dropout_rng = jax.random.fold_in(dropout_rng, lax.axis_index(axis_name))

  if microbatches == 1:
    loss, metrics, grads, new_stats = _forward_backward(
        state, state.batch_stats, batch, dropout_rng, task, loss_fn)
  else:
    loss, metrics, grads, new_stats = _accumulated(
        state, batch, dropout_rng, task, loss_fn, microbatches)
  if axis_name is not None:
    grads = lax.pmean(grads, axis_name)
    loss, metrics = lax.pmean((loss, metrics), axis_name)
    # Under bn_sync="per_device" each device keeps its own statistics in the
    # step; the copies are averaged so the replicated state stays identical.
    new_stats = lax.pmean(new_stats, axis_name)
  grad_fn = None
  if optimizers.needs_grad_fn(state.opt_state):
    grad_fn = _gradient_at(state, batch, dropout_rng, task, loss_fn, microbatches, axis_name)
  return _apply_update(state, grads, new_stats, loss, metrics, skip_nonfinite, grad_fn)


def _gradient_at(state, batch, dropout_rng, task, loss_fn, microbatches: int, axis_name):
  """``grad_fn(params, i)``: the gradient of this step's batch loss at other parameters (SAM).

  Same batch, dropout mask and BatchNorm mode as the step's own gradient; the BatchNorm
  statistics of that second forward pass are discarded, so a SAM step updates them
  once, from the pass at the current parameters.
  """
  def grad_fn(params, _):
    at = state.replace(params=params)
    if microbatches == 1:
      grads = _forward_backward(at, state.batch_stats, batch, dropout_rng, task, loss_fn)[2]
    else:
      grads = _accumulated(at, batch, dropout_rng, task, loss_fn, microbatches)[2]
    return grads if axis_name is None else lax.pmean(grads, axis_name)
  return grad_fn


def _apply_gradients(state: TrainState, grads, new_stats, grad_fn) -> TrainState:
  if grad_fn is None:
    return state.apply_gradients(grads=grads, batch_stats=new_stats)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params, grad_fn=grad_fn)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state, batch_stats=new_stats)


def _apply_update(state, grads, new_stats, loss, metrics, skip_nonfinite: bool, grad_fn=None):
  new_state = _apply_gradients(state, grads, new_stats, grad_fn)
  if state.ema_params is not None:
    d = state.ema_decay
    new_state = new_state.replace(ema_params=jax.tree.map(
        lambda e, p: d * e + (1.0 - d) * p, state.ema_params, new_state.params))
  sum_sq = checked_sum_of_squares(grads)
  finite = jnp.isfinite(loss) & ~jnp.isnan(sum_sq)
  if skip_nonfinite:
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    new_state = new_state.replace(
        step=state.step + 1, nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32))
  return new_state, {
      "loss": loss,
      **metrics,
      "grad_norm": jnp.sqrt(sum_sq),
      # NaN for a hand-made optax chain, which does not expose its rate.
      "learning_rate": (optimizers.learning_rate(state.opt_state)
                        if optimizers.has_learning_rate(state.opt_state) else jnp.nan),
      "nonfinite": (~finite).astype(jnp.float32),
  }


def predict(state: TrainState, images: jax.Array, *,
            apply_fn: Callable | None = None) -> jax.Array:
  """The model's evaluation-mode outputs for ``images`` (EMA parameters when kept)."""
  variables = {"params": state.eval_params()}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return (apply_fn or state.apply_fn)(variables, images, train=False)


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    task: Task,
    loss_fn: TaskLoss,
    apply_fn: Callable | None = None,
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
  """Summed metrics over the valid (``mask`` = 1) examples of ``batch``.

  Sums, not means, so that batches (and devices) merge by addition and a
  padded last batch counts each real example exactly once.

  Args:
    state: the train state (its EMA parameters when it keeps them).
    batch: {image, mask, the task's fields}.
    task: adds its sums (`Task.eval_sums`).
    loss_fn: the run's per-example loss.
    apply_fn: the model's apply for evaluation (e.g. a forward-only formulation of
      the same module); default ``state.apply_fn``.
    axis_name: the `pmap` axis to sum over.

  Returns:
    ``loss_sum``, ``count`` and the task's sums.
  """
  outputs = predict(state, batch["image"], apply_fn=apply_fn)
  per_example = loss_fn(outputs, batch)
  mask = batch["mask"]
  metrics = {"loss_sum": jnp.sum(jnp.where(mask > 0, per_example, 0.0)), "count": jnp.sum(mask),
             **task.eval_sums(outputs, batch)}
  if axis_name is not None:
    metrics = lax.psum(metrics, axis_name)
  return metrics
