"""Margin (SVM-style) losses on raw scores.

`hinge`, `squared_hinge` and `categorical_hinge` follow Keras; `multi_margin`
and `hinge_embedding` follow PyTorch. Note the two "hinge" conventions differ:
Keras ``Hinge`` is ``max(0, 1 - y s)`` on scores ``s``, while PyTorch
``HingeEmbeddingLoss`` takes *distances* ``d`` and is ``d`` for similar pairs and
``max(0, margin - d)`` for dissimilar ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from cnnjax.losses import _checks


def _signed_labels(t: jax.Array) -> jax.Array:
  """Keras' rule: if every label is 0 or 1, map them to -1/+1; else keep them."""
  is_binary = jnp.all((t == 0) | (t == 1))
  return jnp.where(is_binary, 2.0 * t - 1.0, t)


def hinge(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Keras ``Hinge``: ``mean(max(0, 1 - y s))`` with labels ``y`` in {-1, +1}.

  Labels in {0, 1} are converted to {-1, +1} when the whole `targets` array is
  0/1, as Keras does.

  Args:
    predictions: ``[batch, ...]`` real-valued scores (a decision function).
    targets: ``[batch, ...]`` labels in {-1, +1} or {0, 1}.

  Returns:
    ``[batch]`` per-example loss (mean over non-batch axes).

  Examples:
    >>> import jax.numpy as jnp
    >>> hinge(jnp.array([[0.3, -2.0]]), jnp.array([[1.0, -1.0]]))
    Array([0.35], dtype=float32)

  References:
    Cortes & Vapnik, "Support-Vector Networks", Machine Learning 1995.
  """
  s, t = _checks.floats(predictions, targets, "hinge")
  return _checks.mean_per_example(jax.nn.relu(1.0 - _signed_labels(t) * s))


def squared_hinge(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Keras ``SquaredHinge``: ``mean(max(0, 1 - y s)^2)``, labels as in `hinge`.

  Args:
    predictions: ``[batch, ...]`` real-valued scores.
    targets: ``[batch, ...]`` labels in {-1, +1} or {0, 1}.

  Returns:
    ``[batch]`` per-example loss (mean over non-batch axes).

  Examples:
    >>> import jax.numpy as jnp
    >>> squared_hinge(jnp.array([[0.5, 0.0]]), jnp.array([[1.0, 0.0]]))
    Array([0.625], dtype=float32)
  """
  s, t = _checks.floats(predictions, targets, "squared_hinge")
  return _checks.mean_per_example(jnp.square(jax.nn.relu(1.0 - _signed_labels(t) * s)))


def categorical_hinge(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Keras ``CategoricalHinge``: ``max(0, 1 + max_c((1 - t_c) s_c) - sum_c t_c s_c)``.

  Crammer-Singer multi-class hinge for one-hot targets. As in Keras the
  "negative" term is ``max((1 - t) * s)``, which includes the 0 of the true
  class, so it is never below 0.

  Args:
    predictions: ``[batch, ..., num_classes]`` scores.
    targets: ``[batch, ..., num_classes]`` one-hot targets.

  Returns:
    ``[batch]`` per-example loss (mean over axes between batch and classes).

  Examples:
    >>> import jax.numpy as jnp
    >>> categorical_hinge(jnp.array([[2.0, 1.5, -1.0]]), jnp.array([[1.0, 0.0, 0.0]]))
    Array([0.5], dtype=float32)

  References:
    Crammer & Singer, "On the Algorithmic Implementation of Multiclass
    Kernel-based Vector Machines", JMLR 2001.
  """
  fn = "categorical_hinge"
  s, t = _checks.floats(predictions, targets, fn)
  if s.ndim < 2:
    raise ValueError(f"{fn}: predictions must be [batch, ..., num_classes], got {s.shape}")
  pos = jnp.sum(t * s, axis=-1)
  neg = jnp.max((1.0 - t) * s, axis=-1)
  return _checks.mean_per_example(jax.nn.relu(neg - pos + 1.0))


def multi_margin(predictions: jax.Array, targets: jax.Array, *, p: int = 1,
                 margin: float = 1.0,
                 class_weights: Sequence[float] | jax.Array | None = None) -> jax.Array:
  """PyTorch ``MultiMarginLoss``: ``sum_{j != y} max(0, margin - s_y + s_j)^p / C``.

  Args:
    predictions: ``[batch, ..., num_classes]`` scores.
    targets: ``[batch, ...]`` integer labels.
    p: 1 or 2.
    margin: the required gap between the true score and the others.
    class_weights: optional ``[num_classes]``; the terms of an example are
      multiplied by the weight of its true class (PyTorch ``weight``).

  Returns:
    ``[batch]`` per-example loss (mean over axes between batch and classes).

  Examples:
    >>> import jax.numpy as jnp
    >>> multi_margin(jnp.array([[0.1, 0.2, 0.4, 0.8]]), jnp.array([3]))
    Array([0.325], dtype=float32)
  """
  fn = "multi_margin"
  s, y = _checks.int_labels(predictions, targets, fn)
  if p not in (1, 2):
    raise ValueError(f"{fn}: p={p} is not supported; accepted: [1, 2]")
  num_classes = s.shape[-1]
  s_y = jnp.take_along_axis(s, y[..., None], axis=-1)
  terms = jax.nn.relu(margin - s_y + s)
  if p == 2:
    terms = jnp.square(terms)
  not_true = jnp.arange(num_classes) != y[..., None]
  loss = jnp.sum(jnp.where(not_true, terms, 0.0), axis=-1) / num_classes
  if class_weights is not None:
    w = _checks.per_class_vector(class_weights, num_classes, "class_weights", fn, s.dtype)
    loss = loss * w[y]
  return _checks.mean_per_example(loss)


def hinge_embedding(predictions: jax.Array, targets: jax.Array, *,
                    margin: float = 1.0) -> jax.Array:
  """PyTorch ``HingeEmbeddingLoss``: ``d`` if ``y = 1``, ``max(0, margin - d)`` if ``y = -1``.

  `predictions` are distances (e.g. L1 between two embeddings); labels are
  {-1, +1}. Exactly as PyTorch, any label other than +1 adds the margin term and
  any other than -1 adds ``d``.

  Args:
    predictions: ``[batch, ...]`` distances.
    targets: ``[batch, ...]`` labels in {-1, +1}.
    margin: the distance dissimilar pairs are pushed beyond.

  Returns:
    ``[batch]`` per-example loss (mean over non-batch axes).

  Examples:
    >>> import jax.numpy as jnp
    >>> hinge_embedding(jnp.array([[0.25, 0.5]]), jnp.array([[1.0, -1.0]]))
    Array([0.375], dtype=float32)
  """
  d, t = _checks.floats(predictions, targets, "hinge_embedding")
  margin_term = jnp.where(t != 1, jax.nn.relu(margin - d), 0.0)
  self_term = jnp.where(t != -1, d, 0.0)
  return _checks.mean_per_example(margin_term + self_term)
