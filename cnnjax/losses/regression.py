"""Regression losses: one value per example, the mean over its non-batch axes.

Each function takes `predictions` and `targets` of the same shape ``[batch, ...]``
and returns ``[batch]``. Averaging over the non-batch axes (rather than summing)
makes `reduce(..., reduction="mean")` equal PyTorch's ``reduction="mean"`` and
Keras' default reduction when every example has the same size.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from cnnjax.losses import _checks
from cnnjax.losses._checks import EPSILON


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean squared error, ``mean((p - t)^2)`` per example.

  Args:
    predictions: ``[batch, ...]`` floating predictions.
    targets: ``[batch, ...]`` targets, same shape.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> mean_squared_error(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 4.0]]))
    Array([2.5], dtype=float32)
  """
  p, t = _checks.floats(predictions, targets, "mean_squared_error")
  return _checks.mean_per_example(optax.losses.squared_error(p, t))


def mean_absolute_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean absolute error, ``mean(|p - t|)`` per example.

  Args:
    predictions: ``[batch, ...]`` floating predictions.
    targets: ``[batch, ...]`` targets, same shape.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> mean_absolute_error(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 4.0]]))
    Array([1.5], dtype=float32)
  """
  p, t = _checks.floats(predictions, targets, "mean_absolute_error")
  return _checks.mean_per_example(jnp.abs(p - t))


def huber(predictions: jax.Array, targets: jax.Array, *, delta: float = 1.0) -> jax.Array:
  """Huber loss: ``0.5 e^2`` if ``|e| <= delta`` else ``delta (|e| - 0.5 delta)``.

  Same as ``torch.nn.HuberLoss(delta)`` and ``keras.losses.Huber(delta)``; it equals
  `smooth_l1` with ``beta = delta`` times ``delta``.

  Args:
    predictions: ``[batch, ...]`` floating predictions.
    targets: ``[batch, ...]`` targets, same shape.
    delta: where the loss turns from quadratic to linear, > 0.

  Returns:
    ``[batch]`` per-example loss (mean over non-batch axes).

  Examples:
    >>> import jax.numpy as jnp
    >>> huber(jnp.array([[0.5, 3.0]]), jnp.array([[0.0, 0.0]]))
    Array([1.3125], dtype=float32)

  References:
    Huber, "Robust Estimation of a Location Parameter", 1964.
  """
  p, t = _checks.floats(predictions, targets, "huber")
  if isinstance(delta, (int, float)) and delta <= 0:
    raise ValueError(f"huber: delta={delta} must be > 0")
  return _checks.mean_per_example(optax.losses.huber_loss(p, t, delta=delta))


def smooth_l1(predictions: jax.Array, targets: jax.Array, *, beta: float = 1.0) -> jax.Array:
  """Smooth L1: ``0.5 e^2 / beta`` if ``|e| < beta`` else ``|e| - 0.5 beta``.

  Same as ``torch.nn.SmoothL1Loss(beta)`` (Fast R-CNN box regression); ``beta=0``
  is plain L1. Equals ``huber(delta=beta) / beta``: the linear part has slope 1
  whatever beta is, whereas Huber's slope is ``delta``.

  Args:
    predictions: ``[batch, ...]`` floating predictions.
    targets: ``[batch, ...]`` targets, same shape.
    beta: width of the quadratic zone, >= 0.

  Returns:
    ``[batch]`` per-example loss (mean over non-batch axes).

  Examples:
    >>> import jax.numpy as jnp
    >>> smooth_l1(jnp.array([[0.5, 3.0]]), jnp.array([[0.0, 0.0]]), beta=2.0)
    Array([1.03125], dtype=float32)

  References:
    Girshick, "Fast R-CNN", ICCV 2015.
  """
  p, t = _checks.floats(predictions, targets, "smooth_l1")
  if isinstance(beta, (int, float)):
    if beta < 0:
      raise ValueError(f"smooth_l1: beta={beta} must be >= 0")
    if beta == 0:
      return _checks.mean_per_example(jnp.abs(p - t))
  return _checks.mean_per_example(optax.losses.huber_loss(p, t, delta=beta) / beta)


def log_cosh(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Log-cosh loss, ``mean(log(cosh(p - t)))`` per example (Keras ``LogCosh``).

  Computed as ``logaddexp(e, -e) - log 2`` (optax), finite for any error size.

  Args:
    predictions: ``[batch, ...]`` floating predictions.
    targets: ``[batch, ...]`` targets, same shape.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> log_cosh(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 0.0]]))
    Array([0.2168904], dtype=float32)
  """
  p, t = _checks.floats(predictions, targets, "log_cosh")
  return _checks.mean_per_example(optax.losses.log_cosh(p, t))


def mean_squared_log_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Keras ``MeanSquaredLogarithmicError``: ``mean((log1p(p) - log1p(t))^2)``.

  Both sides are first clipped from below at 1e-7, as Keras does, so negative
  inputs never reach the logarithm.

  Args:
    predictions: ``[batch, ...]`` non-negative predictions.
    targets: ``[batch, ...]`` non-negative targets, same shape.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> mean_squared_log_error(jnp.array([[3.0]]), jnp.array([[0.0]]))  # (log 4 - 1e-7)^2
    Array([1.9218117], dtype=float32)
  """
  p, t = _checks.floats(predictions, targets, "mean_squared_log_error")
  lp = jnp.log1p(jnp.maximum(p, EPSILON))
  lt = jnp.log1p(jnp.maximum(t, EPSILON))
  return _checks.mean_per_example(jnp.square(lp - lt))


def mean_absolute_percentage_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Keras ``MeanAbsolutePercentageError``: ``100 mean(|t - p| / max(|t|, 1e-7))``.

  Args:
    predictions: ``[batch, ...]`` floating predictions.
    targets: ``[batch, ...]`` targets, same shape; zero targets make it explode.

  Returns:
    ``[batch]`` per-example loss, in percent.

  Examples:
    >>> import jax.numpy as jnp
    >>> mean_absolute_percentage_error(jnp.array([[1.5, 1.0]]), jnp.array([[1.0, 2.0]]))
    Array([50.], dtype=float32)
  """
  p, t = _checks.floats(predictions, targets, "mean_absolute_percentage_error")
  return 100.0 * _checks.mean_per_example(jnp.abs(t - p) / jnp.maximum(jnp.abs(t), EPSILON))


def poisson(predictions: jax.Array, targets: jax.Array, *, log_input: bool = False,
            eps: float = EPSILON) -> jax.Array:
  """Poisson negative log-likelihood (without the ``log(t!)`` constant).

  ``log_input=False`` (default, Keras ``Poisson``): predictions are rates,
  ``p - t log(p + eps)``. ``log_input=True``: predictions are log-rates,
  ``exp(p) - t p`` (PyTorch ``PoissonNLLLoss`` default). PyTorch's
  ``log_input=False`` uses ``eps=1e-8``.

  Args:
    predictions: ``[batch, ...]`` rates (or log-rates).
    targets: ``[batch, ...]`` counts, same shape.
    log_input: whether predictions are log-rates.
    eps: added to the rate inside the log.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> poisson(jnp.array([[1.0, 2.0]]), jnp.array([[1.0, 0.0]]))
    Array([1.5], dtype=float32)
  """
  p, t = _checks.floats(predictions, targets, "poisson")
  if log_input:
    return _checks.mean_per_example(jnp.exp(p) - t * p)
  return _checks.mean_per_example(p - t * jnp.log(p + eps))


def gaussian_nll(predictions: tuple[jax.Array, jax.Array], targets: jax.Array, *,
                 eps: float = 1e-6, full: bool = False) -> jax.Array:
  """Gaussian negative log-likelihood, as ``torch.nn.GaussianNLLLoss``.

  ``0.5 (log(max(var, eps)) + (mean - t)^2 / max(var, eps))`` plus
  ``0.5 log(2 pi)`` when ``full``. As in PyTorch the clamp does not block the
  gradient with respect to the variance (a straight-through clamp).

  Args:
    predictions: a ``(mean, variance)`` pair; mean ``[batch, ...]``, variance of
      the same shape or broadcastable to it (e.g. ``[batch, ..., 1]``), > 0.
    targets: ``[batch, ...]`` targets, the mean's shape.
    eps: lower clamp for the variance.
    full: include the constant ``0.5 log(2 pi)``.

  Returns:
    ``[batch]`` per-example loss (mean over non-batch axes).

  Examples:
    >>> import jax.numpy as jnp
    >>> gaussian_nll((jnp.array([[1.0]]), jnp.array([[1.0]])), jnp.array([[3.0]]))
    Array([2.], dtype=float32)

  References:
    Nix & Weigend, "Estimating the mean and variance of the target probability
    distribution", ICNN 1994.
  """
  fn = "gaussian_nll"
  if not isinstance(predictions, (tuple, list)) or len(predictions) != 2:
    raise TypeError(f"{fn}: predictions must be a (mean, variance) pair, "
                    f"got {type(predictions).__name__}")
  mean, t = _checks.floats(predictions[0], targets, fn, names=("mean", "targets"))
  var = _checks.as_array(predictions[1], "variance", fn)
  _checks.check_float(var, "variance", fn)
  try:
    shape = jnp.broadcast_shapes(var.shape, mean.shape)
  except ValueError:
    shape = None
  if shape != mean.shape:
    raise ValueError(f"{fn}: variance shape {var.shape} must broadcast to mean shape "
                     f"{mean.shape}")
  var = jnp.broadcast_to(var, mean.shape)
  clamped = var + jax.lax.stop_gradient(jnp.maximum(var, eps) - var)
  loss = 0.5 * (jnp.log(clamped) + jnp.square(mean - t) / clamped)
  if full:
    loss = loss + 0.5 * math.log(2 * math.pi)
  return _checks.mean_per_example(loss)


def cosine_similarity(predictions: jax.Array, targets: jax.Array, *,
                      axis: int = -1) -> jax.Array:
  """Keras ``CosineSimilarity`` loss: the *negative* cosine similarity.

  Vectors along `axis` are L2-normalised with the squared norm clipped at 1e-12
  (so a zero vector gives 0 and finite gradients); other non-batch axes are
  averaged. Ranges over [-1, 1], -1 meaning the same direction.

  Args:
    predictions: ``[batch, ..., dim]`` floating predictions.
    targets: ``[batch, ..., dim]`` targets, same shape.
    axis: the vector axis; must not be the batch axis.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> cosine_similarity(jnp.array([[1.0, 0.0], [1.0, 0.0]]),
    ...                   jnp.array([[2.0, 0.0], [0.0, 3.0]]))
    Array([-1., -0.], dtype=float32)
  """
  fn = "cosine_similarity"
  p, t = _checks.floats(predictions, targets, fn)
  if p.ndim < 2 or axis % p.ndim == 0:
    raise ValueError(f"{fn}: needs [batch, ..., dim] inputs and a non-batch axis, got "
                     f"shape {p.shape} and axis={axis}")
  cos = optax.losses.cosine_similarity(p, t, epsilon=1e-12, axis=axis)
  return -_checks.mean_per_example(cos)
