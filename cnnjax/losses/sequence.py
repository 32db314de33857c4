"""Sequence losses: per-time-step losses averaged over each sequence's valid steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cnnjax.losses import _checks
from cnnjax.losses.classification import sparse_categorical_cross_entropy


def sequence_cross_entropy(predictions: jax.Array, targets: jax.Array, *,
                           mask: jax.Array | None = None,
                           from_logits: bool = True,
                           label_smoothing: float = 0.0) -> jax.Array:
  """Mean over valid time steps of the per-step softmax cross-entropy.

  ``sum_t m_t CE(x_t, y_t) / max(sum_t m_t, 1)``: padding steps (``m_t = 0``)
  neither add loss nor count in the mean, so a padded sequence scores the same
  as its unpadded slice; an all-padding sequence gives 0. Equivalent to
  ``tf.contrib.seq2seq.sequence_loss`` averaged per sequence.

  Args:
    predictions: ``[batch, time, num_classes]`` logits (or probabilities).
    targets: ``[batch, time]`` integer labels.
    mask: optional ``[batch, time]`` mask (bool or 0/1); None means all valid.
    from_logits: whether `predictions` are logits.
    label_smoothing: as in `sparse_categorical_cross_entropy`.

  Returns:
    ``[batch]`` per-sequence loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits = jnp.zeros((1, 3, 4))
    >>> sequence_cross_entropy(logits, jnp.array([[1, 2, 0]]),
    ...                        mask=jnp.array([[True, True, False]]))
    Array([1.3862944], dtype=float32)
  """
  fn = "sequence_cross_entropy"
  x, y = _checks.int_labels(predictions, targets, fn)
  if x.ndim != 3:
    raise ValueError(f"{fn}: predictions must be [batch, time, num_classes], got {x.shape}")
  # Per-step losses: fold time into the batch so each step is one "example".
  b, t, c = x.shape
  step = sparse_categorical_cross_entropy(
      x.reshape(b * t, c), y.reshape(b * t), from_logits=from_logits,
      label_smoothing=label_smoothing).reshape(b, t)
  if mask is None:
    return jnp.mean(step, axis=1)
  m = jnp.asarray(mask)
  if m.shape != y.shape:
    raise ValueError(f"{fn}: mask shape {m.shape} must equal targets shape {y.shape}")
  if not (m.dtype == jnp.bool_ or jnp.issubdtype(m.dtype, jnp.number)):
    raise TypeError(f"{fn}: mask must be bool or numeric, got {m.dtype} instead")
  return _checks.masked_mean_per_example(step, m)
