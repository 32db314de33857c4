"""Curvature diagnostics during training (``config.diagnostics``; docs/curvature.md).

Every ``every_steps`` steps (and at step 0 and the last step) the trainer calls a
`Diagnostics` on its current state. It evaluates, on one fixed batch of
``num_examples`` training examples (default: one training batch; drawn once with a constant key: the same for every
seed; no augmentation):

* ``sharpness``: the top eigenvalue of the Hessian of the training loss (Lanczos,
  ``lanczos_iterations`` Hessian-vector products, started from the previous evaluation's
  top eigenvector: the sharpness moves slowly, so a warm start converges in a few steps);
* ``preconditioned_sharpness`` (Adam family): the top eigenvalue of
  ``P^(-1/2) H P^(-1/2)`` with Adam's preconditioner from the optimizer state (Cohen et
  al. 2022);
* ``hessian_trace``: Hutchinson with ``trace_samples`` Rademacher probes;
* ``noise_scale``: McCandlish et al. (2018)'s ``B_simple`` from per-example gradients
  (per training-size batch for a BatchNorm model in ``"train"`` mode, where examples
  interact).

Beside each value it reports the stability threshold the optimizer's update implies for
it (`stability_threshold`), so a plot shows whether the run sits at the edge of
stability. The BatchNorm statistics follow ``batch_stats_mode`` (see
`cnnjax.training.curvature_loss`). Every function is compiled once, when the trainer
builds the `Diagnostics`; the trainer times all of it apart from training.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree

from cnnjax import config as config_lib
from cnnjax import curvature, optimizers
from cnnjax.data.permutation import keyed_permutation
from cnnjax.models import has_batch_norm
from cnnjax.training import curvature_loss
from cnnjax.training.build import Run

# The fixed batch is drawn with this constant key (like the validation split).
BATCH_KEY = 0xD1A6_0571C5
# The first Lanczos start (later ones are the previous top eigenvector).
_START_KEY = 0


def stability_threshold(optimizer_config: ml_collections.ConfigDict,
                        learning_rate: float) -> float | None:
  """The sharpness above which the optimizer's update diverges on a quadratic, or None.

  Gradient descent ``2 / lr``; heavy-ball momentum ``beta`` (optax ``sgd(momentum=beta)``:
  "momentum", or "sgd" with ``momentum`` set) ``(2 + 2 beta) / lr``; Nesterov
  ``(2 + 2 beta) / ((1 + 2 beta) lr)`` (Cohen et al. 2021, appendix; both from the
  update's eigenvalue reaching -1 on a quadratic of that curvature). None for any other
  optimizer (Adam's threshold is on the preconditioned sharpness,
  `preconditioned_threshold`; SAM has none). The loss is the task's: ``l2`` and weight
  decay add to the curvature the update sees, and are not included.

  Examples:
    >>> from cnnjax import config as config_lib
    >>> section = config_lib.get_config().optimizer
    >>> section.name = "momentum"
    >>> round(stability_threshold(section, 0.1), 6)  # beta = 0.9
    38.0
  """
  name, lr = optimizer_config.name, float(learning_rate)
  if name not in ("sgd", "momentum", "nesterov") or not lr > 0:
    return None
  beta = optimizer_config.momentum
  if beta is None:
    beta = optimizers.default_hyperparameter(name, "momentum") or 0.0
  if name == "nesterov":
    return (2.0 + 2.0 * beta) / ((1.0 + 2.0 * beta) * lr)
  return (2.0 + 2.0 * beta) / lr


def preconditioned_threshold(optimizer_config: ml_collections.ConfigDict,
                             learning_rate: float) -> float | None:
  """``(2 + 2 b1) / ((1 - b1) lr)`` for the Adam family (38 / lr at b1 = 0.9), else None.

  Cohen et al. (2022): the threshold of the preconditioned sharpness for Adam's update
  with its exponential moving average of the gradient.
  """
  if optimizers.base_name(optimizer_config) not in config_lib.PRECONDITIONED:
    return None
  b1 = optimizer_config.b1
  if b1 is None:
    b1 = optimizers.default_hyperparameter(optimizers.base_name(optimizer_config), "b1")
  lr = float(learning_rate)
  return (2.0 + 2.0 * b1) / ((1.0 - b1) * lr) if lr > 0 else None


def fixed_batch(run: Run, num_examples: int | None, group_size: int) -> dict[str, np.ndarray]:
  """The diagnostics batch: ``num_examples`` training examples (None = one training batch,
  0 = all), a multiple of ``group_size``, chosen with `BATCH_KEY`, in their stored order."""
  train = run.data.split_arrays("train")
  if num_examples is None:
    num_examples = run.config.batch_size
  n = len(train["image"])
  if num_examples > n:
    raise ValueError(f"diagnostics.num_examples={num_examples} exceeds the {n} training "
                     "examples")
  size = (num_examples or n) // group_size * group_size
  if size == 0:
    raise ValueError(f"diagnostics: {n} training examples hold no whole batch of {group_size}")
  rows = np.sort(keyed_permutation(n, BATCH_KEY)[:size])
  return {k: v[rows] for k, v in train.items()}


class Diagnostics:
  """The diagnostics of one run, compiled once; call it on a (single-device) state.

  Args:
    run: the run.
    settings: its ``config.diagnostics`` section (validated).
    bn_ghost_batches: see `cnnjax.training.curvature_loss.curvature_model`.
  """

  def __init__(self, run: Run, settings: ml_collections.ConfigDict, *,
               bn_ghost_batches: int | None = None):
    self.run, self.settings = run, settings
    self.quantities = tuple(settings.quantities)
    mode = settings.batch_stats_mode
    # In "train" mode a BatchNorm model's loss is per training batch; others take any split.
    interacting = mode == "train" and has_batch_norm(run.config.model)
    self.group = run.config.batch_size if mode == "train" else 1
    self.batch = jax.device_put(fixed_batch(run, settings.num_examples, self.group))
    self.noise_group = run.config.batch_size if interacting else 1
    options = dict(batch_stats_mode=mode, bn_ghost_batches=bn_ghost_batches)
    self._loss = curvature_loss.batch_loss(run, **options)
    noise_loss = curvature_loss.batch_loss(run, group_size=self.noise_group, **options)
    self._products = jax.jit(self._scaled_products)
    self._noise = jax.jit(lambda p, s, b: curvature.gradient_noise_scale(
        lambda q, part: noise_loss(q, s, part), p, b, group_size=self.noise_group))
    self._starts: dict[str, jax.Array] = {}

  @property
  def num_examples(self) -> int:
    return int(self.batch["image"].shape[0])

  def _scaled_products(self, params, batch_stats, batch, scale, vectors):
    """``scale * H (scale * v)`` for each row ``v`` (scale = 1: plain Hessian products)."""
    _, unravel = ravel_pytree(params)
    loss = lambda p: self._loss(p, batch_stats, batch)

    def one(v):
      return scale * ravel_pytree(curvature.hvp(loss, params, unravel(scale * v)))[0]

    return jax.vmap(one)(vectors)

  def _operator(self, state, scale: jax.Array):
    return lambda vectors: self._products(state.params, state.batch_stats, self.batch, scale,
                                          vectors)

  def compile(self, state) -> None:
    """Compiles every function the quantities need, for ``state``'s shapes.

    One evaluation, discarded: the Hessian-vector product, the Lanczos step and the small
    host-side programs around them are all compiled on first use, so this is the only
    way none of that lands in the first logged evaluation's time.
    """
    self(state)
    self._starts.clear()  # the first logged evaluation starts from the documented key

  def _top(self, name: str, operator, n: int) -> float:
    start = self._starts.get(name)
    if start is None:
      start = jax.random.normal(jax.random.key(_START_KEY), (n,), jnp.float32)
    m = min(self.settings.lanczos_iterations, n)
    values, vectors = curvature.top_eigenpairs_of(operator, start, k=1, num_iterations=m)
    self._starts[name] = vectors[0]
    return float(values[0])

  def __call__(self, state) -> dict[str, Any]:
    """The quantities at ``state``, with ``learning_rate`` and the stability thresholds."""
    n = ravel_pytree(state.params)[0].size
    ones = jnp.ones((n,), jnp.float32)
    lr = float(optimizers.learning_rate(state.opt_state))
    section = self.run.config.optimizer
    out: dict[str, Any] = {"learning_rate": lr}
    if "sharpness" in self.quantities:
      out["sharpness"] = self._top("sharpness", self._operator(state, ones), n)
      out["sharpness_threshold"] = stability_threshold(section, lr)
    if "preconditioned_sharpness" in self.quantities:
      out["preconditioned_sharpness"] = self._preconditioned(state, section, n)
      out["preconditioned_threshold"] = preconditioned_threshold(section, lr)
    if "hessian_trace" in self.quantities:
      out["hessian_trace"] = float(curvature.hessian_trace_of(
          self._operator(state, ones), n, num_samples=self.settings.trace_samples, chunk=1,
          key=jax.random.fold_in(jax.random.key(_START_KEY), int(state.step))))
    if "noise_scale" in self.quantities:
      out["noise_scale"] = float(self._noise(state.params, state.batch_stats,
                                             self.batch)["noise_scale"])
    return out

  def _preconditioned(self, state, section, n: int) -> float:
    name = optimizers.base_name(section)
    b2, eps = (section[k] if section[k] is not None else
               optimizers.default_hyperparameter(name, k) for k in ("b2", "eps"))
    p = curvature.adam_preconditioner(state.opt_state, b2=float(b2), eps=float(eps))
    scale = jax.lax.rsqrt(ravel_pytree(p)[0].astype(jnp.float32))
    if not bool(jnp.all(jnp.isfinite(scale))):
      return math.nan  # before the first update there is no second moment
    return self._top("preconditioned_sharpness", self._operator(state, scale), n)
