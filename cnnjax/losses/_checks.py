"""Input validation and small numerical helpers shared by every loss family.

All checks run at trace time: shapes and dtypes are static under `jax.jit`, so a
mismatch fails before anything is compiled, with a message naming both sides.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

# Keras clips probabilities to [EPSILON, 1 - EPSILON] (keras.config.epsilon()).
EPSILON = 1e-7


def as_array(x, what: str, fn: str) -> jax.Array:
  """Converts `x` to an array, refusing objects that are not array-like."""
  try:
    return jnp.asarray(x)
  except TypeError as e:
    raise TypeError(f"{fn}: {what} must be an array, got {type(x).__name__}") from e


def check_float(x: jax.Array, what: str, fn: str) -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{fn}: {what} must have a floating dtype, got {x.dtype} instead")


def check_batched(x: jax.Array, what: str, fn: str) -> None:
  if x.ndim < 1:
    raise ValueError(
        f"{fn}: {what} must have a leading batch axis, got a scalar of shape {x.shape}")


def check_same_shape(a: jax.Array, b: jax.Array, names: tuple[str, str], fn: str) -> None:
  # No broadcasting: a [B, 1] vs [B] mismatch silently becomes [B, B] otherwise.
  if a.shape != b.shape:
    raise ValueError(
        f"{fn}: {names[0]} shape {a.shape} and {names[1]} shape {b.shape} must be equal")


def floats(predictions, targets, fn: str, *, names=("predictions", "targets")):
  """Validates a (predictions, targets) pair of equal shape; targets cast to float."""
  p = as_array(predictions, names[0], fn)
  t = as_array(targets, names[1], fn)
  check_float(p, names[0], fn)
  check_batched(p, names[0], fn)
  check_same_shape(p, t, names, fn)
  if not (jnp.issubdtype(t.dtype, jnp.number) or t.dtype == jnp.bool_):
    raise TypeError(f"{fn}: {names[1]} must be numeric, got {t.dtype} instead")
  return p, t.astype(p.dtype)


def int_labels(logits, labels, fn: str):
  """Validates logits [B, ..., C] against integer labels [B, ...]."""
  x = as_array(logits, "predictions", fn)
  y = as_array(labels, "targets", fn)
  check_float(x, "predictions", fn)
  if x.ndim < 2:
    raise ValueError(
        f"{fn}: predictions must be [batch, ..., num_classes], got shape {x.shape}")
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise TypeError(
        f"{fn}: targets must be integer class indices, got {y.dtype} instead "
        "(use categorical_cross_entropy for one-hot or probability targets)")
  if y.shape != x.shape[:-1]:
    raise ValueError(
        f"{fn}: targets shape {y.shape} must equal predictions shape {x.shape} "
        f"without its class axis, i.e. {x.shape[:-1]}")
  return x, y


def check_fraction(value, what: str, fn: str, *, upper_open: bool = False) -> None:
  """Checks a Python-number option lies in [0, 1] (traced values pass unchecked)."""
  if isinstance(value, (int, float)):
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
      bound = "[0, 1)" if upper_open else "[0, 1]"
      raise ValueError(f"{fn}: {what}={value} must lie in {bound}")


def mean_per_example(x: jax.Array) -> jax.Array:
  """Mean over every axis but the leading batch axis: [B, ...] -> [B]."""
  if x.ndim <= 1:
    return x
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def sum_per_example(x: jax.Array) -> jax.Array:
  if x.ndim <= 1:
    return x
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def masked_mean_per_example(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `x` over its valid non-batch positions; 0 where none is valid."""
  mask = mask.astype(x.dtype)
  total = sum_per_example(jnp.where(mask > 0, x * mask, 0.0))
  count = sum_per_example(mask)
  return total / jnp.maximum(count, 1.0)


def clip_probabilities(p: jax.Array) -> jax.Array:
  return jnp.clip(p, EPSILON, 1.0 - EPSILON)


def normalized_log_probabilities(probs: jax.Array, axis: int = -1) -> jax.Array:
  """Keras' from_logits=False path: renormalise, clip to [eps, 1 - eps], log."""
  probs = probs / jnp.sum(probs, axis=axis, keepdims=True)
  return jnp.log(clip_probabilities(probs))


def log_probabilities(predictions: jax.Array, from_logits: bool, axis: int = -1) -> jax.Array:
  if from_logits:
    return jax.nn.log_softmax(predictions, axis=axis)
  return normalized_log_probabilities(predictions, axis=axis)


def safe_norm(x: jax.Array, ord: float, axis: int = -1) -> jax.Array:
  """p-norm along `axis` whose gradient at the zero vector is 0, not NaN."""
  if ord == 2:
    s = jnp.sum(jnp.square(x), axis=axis)
  else:
    s = jnp.sum(jnp.abs(x) ** ord, axis=axis)
  positive = s > 0
  # Double `where`: the unselected branch must also have a finite gradient.
  safe_s = jnp.where(positive, s, 1.0)
  return jnp.where(positive, safe_s ** (1.0 / ord), 0.0)


def per_class_vector(value, num_classes: int, what: str, fn: str, dtype) -> jax.Array:
  """A scalar or a length-C sequence, as a [C] array."""
  v = jnp.asarray(value, dtype=dtype)
  if v.ndim == 0:
    return jnp.broadcast_to(v, (num_classes,))
  if v.shape != (num_classes,):
    raise ValueError(
        f"{fn}: {what} must be a scalar or have shape ({num_classes},) to match "
        f"{num_classes} classes, got shape {v.shape}")
  return v


def names_list(values: Sequence[str]) -> str:
  return "[" + ", ".join(values) + "]"
