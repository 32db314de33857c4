"""Losses studied for calibration: sample-dependent focal loss (FLSD-53) and the Brier score."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cnnjax.losses import _checks


def focal_sample_dependent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """FLSD-53: focal loss ``-(1 - p_y)^gamma log p_y`` with ``gamma = 5`` where
  ``p_y < 0.2``, else ``gamma = 3``.

  As Mukhoti et al.'s code (``FocalLossAdaptive(gamma=3)``): no alpha weighting, the
  gradient flows through the modulating factor, ``gamma`` is chosen per example from
  the current ``p_y`` (a piecewise-constant choice, not differentiated).

  Args:
    logits: ``[batch, ..., num_classes]``.
    labels: ``[batch, ...]`` integer labels.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits = jnp.log(jnp.array([[0.1, 0.9], [0.5, 0.5]]))
    >>> focal_sample_dependent(logits, jnp.array([0, 0]))
    Array([1.3596534, 0.0866434], dtype=float32)

  References:
    Mukhoti et al., "Calibrating Deep Neural Networks using Focal Loss", NeurIPS 2020
    (code: github.com/torrvision/focal_calibration).
  """
  x, y = _checks.int_labels(logits, labels, "focal_sample_dependent")
  log_p = jax.nn.log_softmax(x, axis=-1)
  log_p_y = jnp.take_along_axis(log_p, y[..., None], axis=-1)[..., 0]
  p_y = jnp.exp(log_p_y)
  gamma = jnp.where(jax.lax.stop_gradient(p_y) < 0.2, 5.0, 3.0).astype(x.dtype)
  # -expm1(log p) = 1 - p without cancellation; clipped at 0 for p rounded to 1.
  return _checks.mean_per_example(-jnp.maximum(-jnp.expm1(log_p_y), 0.0) ** gamma * log_p_y)


def brier(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The multi-class Brier score ``sum_c (p_c - t_c)^2`` of ``p = softmax(logits)``.

  A sum over classes (Brier 1950), i.e. ``C`` times `mean_squared_error` on the softmax
  outputs; in [0, 2].

  Args:
    logits: ``[batch, ..., num_classes]``.
    labels: ``[batch, ...]`` integer labels.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> brier(jnp.log(jnp.array([[0.25, 0.75]])), jnp.array([0]))
    Array([1.1250001], dtype=float32)

  References:
    Brier, "Verification of Forecasts Expressed in Terms of Probability", Monthly
    Weather Review 1950.
  """
  x, y = _checks.int_labels(logits, labels, "brier")
  p = jax.nn.softmax(x, axis=-1)
  onehot = jax.nn.one_hot(y, x.shape[-1], dtype=x.dtype)
  return _checks.mean_per_example(jnp.sum(jnp.square(p - onehot), axis=-1))
