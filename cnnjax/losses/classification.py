"""Classification losses.

Conventions shared by every function here:

* ``predictions`` are logits by default (``from_logits=True``); with
  ``from_logits=False`` they are probabilities, clipped to [1e-7, 1 - 1e-7] as
  Keras does (and, for softmax losses, first renormalised to sum to 1).
* The class axis is the last one. Extra axes between batch and classes (pixels of
  a segmentation map, time steps) are averaged, so the result is ``[batch]``.
* ``label_smoothing=a`` follows Keras/optax: one-hot targets become
  ``(1 - a) y + a / C`` (``a / 2`` on each side for binary targets). PyTorch's
  ``CrossEntropyLoss(label_smoothing=a)`` is the same distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from cnnjax.losses import _checks


def _binary_logits(predictions: jax.Array, from_logits: bool) -> jax.Array:
  """Logits of binary predictions; probabilities are clipped, then mapped back."""
  if from_logits:
    return predictions
  p = _checks.clip_probabilities(predictions)
  return jnp.log(p) - jnp.log1p(-p)


def binary_cross_entropy(predictions: jax.Array, targets: jax.Array, *,
                         from_logits: bool = True,
                         label_smoothing: float = 0.0) -> jax.Array:
  """Binary cross-entropy, ``-(t log p + (1 - t) log(1 - p))`` averaged per example.

  From logits it uses ``log_sigmoid`` (optax ``sigmoid_binary_cross_entropy``),
  exact and finite for any logit; PyTorch ``BCEWithLogitsLoss``. From
  probabilities it equals Keras ``BinaryCrossentropy`` (clipping at 1e-7) and
  PyTorch ``BCELoss`` away from 0 and 1 (PyTorch clamps the log at -100 instead).

  Args:
    predictions: ``[batch, ...]`` logits (or probabilities), one per binary label.
    targets: ``[batch, ...]`` labels in {0, 1} or soft labels in [0, 1].
    from_logits: whether `predictions` are logits.
    label_smoothing: ``a`` in [0, 1]; targets become ``t (1 - a) + a / 2``.

  Returns:
    ``[batch]`` per-example loss (mean over non-batch axes).

  Examples:
    >>> import jax.numpy as jnp
    >>> binary_cross_entropy(jnp.array([[0.0, 2.0]]), jnp.array([[1.0, 0.0]]))
    Array([1.4100376], dtype=float32)
  """
  fn = "binary_cross_entropy"
  x, t = _checks.floats(predictions, targets, fn)
  _checks.check_fraction(label_smoothing, "label_smoothing", fn)
  t = t * (1.0 - label_smoothing) + 0.5 * label_smoothing
  logits = _binary_logits(x, from_logits)
  return _checks.mean_per_example(optax.losses.sigmoid_binary_cross_entropy(logits, t))


def categorical_cross_entropy(predictions: jax.Array, targets: jax.Array, *,
                              from_logits: bool = True,
                              label_smoothing: float = 0.0) -> jax.Array:
  """Softmax cross-entropy with one-hot or probability targets, ``-sum_c t_c log p_c``.

  Keras ``CategoricalCrossentropy``; PyTorch ``CrossEntropyLoss`` with
  probability targets. From logits it uses optax ``softmax_cross_entropy``.

  Args:
    predictions: ``[batch, ..., num_classes]`` logits (or probabilities).
    targets: ``[batch, ..., num_classes]`` one-hot or probability targets.
    from_logits: whether `predictions` are logits.
    label_smoothing: ``a`` in [0, 1]; targets become ``(1 - a) t + a / C``.

  Returns:
    ``[batch]`` per-example loss (mean over axes between batch and classes).

  Examples:
    >>> import jax.numpy as jnp
    >>> categorical_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 0.0]]))
    Array([0.6931472], dtype=float32)
  """
  fn = "categorical_cross_entropy"
  x, t = _checks.floats(predictions, targets, fn)
  _checks.check_fraction(label_smoothing, "label_smoothing", fn)
  if x.ndim < 2:
    raise ValueError(f"{fn}: predictions must be [batch, ..., num_classes], got {x.shape}")
  if label_smoothing:
    t = optax.losses.smooth_labels(t, label_smoothing)
  if from_logits:
    ce = optax.losses.softmax_cross_entropy(x, t)
  else:
    ce = -jnp.sum(t * _checks.normalized_log_probabilities(x), axis=-1)
  return _checks.mean_per_example(ce)


def _class_weights_of(labels, class_weights, num_classes, dtype, fn):
  w = _checks.per_class_vector(class_weights, num_classes, "class_weights", fn, dtype)
  return w[jnp.clip(labels, 0, num_classes - 1)]


def valid_mask(labels: jax.Array, *, ignore_index: int | None = None) -> jax.Array:
  """1.0 where ``labels != ignore_index`` and 0.0 elsewhere, shape of `labels`.

  With one label per example (``[batch]`` labels) this is the weight vector to
  pass to `reduce` so ignored examples do not count in the mean:
  ``reduce(loss, weights=valid_mask(y, ignore_index=-100),
  reduction="weighted_mean")`` equals PyTorch's ``CrossEntropyLoss(
  ignore_index=-100)``. For dense labels ``[batch, ...]`` sum it over the
  non-batch axes first to weight examples by their number of valid positions.

  Args:
    labels: ``[batch, ...]`` integer labels.
    ignore_index: the label to ignore; None means every label is valid.

  Returns:
    float32 array of the shape of `labels`.

  Examples:
    >>> import jax.numpy as jnp
    >>> valid_mask(jnp.array([2, -100, 0]), ignore_index=-100)
    Array([1., 0., 1.], dtype=float32)
  """
  labels = jnp.asarray(labels)
  if ignore_index is None:
    return jnp.ones(labels.shape, jnp.float32)
  return (labels != ignore_index).astype(jnp.float32)


def sparse_categorical_cross_entropy(
    predictions: jax.Array, targets: jax.Array, *,
    from_logits: bool = True,
    label_smoothing: float = 0.0,
    class_weights: Sequence[float] | jax.Array | None = None,
    ignore_index: int | None = None) -> jax.Array:
  """Softmax cross-entropy with integer labels, ``-log p_y``.

  Keras ``SparseCategoricalCrossentropy`` and PyTorch ``CrossEntropyLoss``.
  Without options it is optax ``softmax_cross_entropy_with_integer_labels``. With
  smoothing ``a`` it is ``(1 - a)(-log p_y) + a mean_c(-log p_c)``, the
  cross-entropy against ``(1 - a) onehot(y) + a / C`` (PyTorch's definition).

  Args:
    predictions: ``[batch, ..., num_classes]`` logits (or probabilities).
    targets: ``[batch, ...]`` integer labels in ``[0, num_classes)``.
    from_logits: whether `predictions` are logits.
    label_smoothing: ``a`` in [0, 1].
    class_weights: optional ``[num_classes]`` weights; each position's loss is
      multiplied by the weight of its true class (PyTorch ``weight`` with
      ``reduction="none"``). PyTorch's ``reduction="mean"`` divides by the sum of
      those weights: compute the loss *without* class_weights and call
      ``reduce(loss, weights=w[y] * valid_mask(y), reduction="weighted_mean")``.
    ignore_index: a label value whose positions give 0 (PyTorch ``ignore_index``,
      Keras ``ignore_class``); with dense labels the example's value is the mean
      over its valid positions. Use `valid_mask` to give such examples weight 0.

  Returns:
    ``[batch]`` per-example loss (mean over axes between batch and classes).

  Examples:
    >>> import jax.numpy as jnp
    >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> sparse_categorical_cross_entropy(logits, jnp.array([0, 2]))
    Array([0.23954487, 1.0986123 ], dtype=float32)
    >>> sparse_categorical_cross_entropy(logits, jnp.array([0, -1]), ignore_index=-1)
    Array([0.23954487, 0.        ], dtype=float32)
  """
  fn = "sparse_categorical_cross_entropy"
  x, y = _checks.int_labels(predictions, targets, fn)
  _checks.check_fraction(label_smoothing, "label_smoothing", fn)
  num_classes = x.shape[-1]
  valid = None
  if ignore_index is not None:
    valid = y != ignore_index
    # Ignored labels may lie outside [0, C) (e.g. -100): gather a real class.
    y = jnp.where(valid, y, 0)

  if from_logits and not label_smoothing:
    loss = optax.losses.softmax_cross_entropy_with_integer_labels(x, y)
  else:
    log_p = _checks.log_probabilities(x, from_logits)
    loss = -jnp.take_along_axis(log_p, y[..., None], axis=-1)[..., 0]
    if label_smoothing:
      loss = (1.0 - label_smoothing) * loss - label_smoothing * jnp.mean(log_p, axis=-1)

  if class_weights is not None:
    loss = loss * _class_weights_of(y, class_weights, num_classes, x.dtype, fn)
  if valid is None:
    return _checks.mean_per_example(loss)
  return _checks.masked_mean_per_example(loss, valid)


def kl_divergence(predictions: jax.Array, targets: jax.Array, *,
                  from_logits: bool = True) -> jax.Array:
  """Kullback-Leibler divergence ``KL(t || p) = sum_c t_c (log t_c - log p_c)``.

  Targets are probabilities; a zero target contributes exactly 0, with finite
  gradients for both arguments. PyTorch ``KLDivLoss`` (which takes log-probabilities
  as input) summed over classes, i.e. its ``reduction="batchmean"`` after `reduce`.
  Keras ``KLDivergence`` also clips the targets at 1e-7; this function does not.

  Args:
    predictions: ``[batch, ..., num_classes]`` logits (or probabilities).
    targets: ``[batch, ..., num_classes]`` target probabilities.
    from_logits: whether `predictions` are logits.

  Returns:
    ``[batch]`` per-example divergence (mean over axes between batch and classes).

  Examples:
    >>> import jax.numpy as jnp
    >>> kl_divergence(jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([[1.0, 0.0]]))
    Array([0.6931472], dtype=float32)
  """
  fn = "kl_divergence"
  x, t = _checks.floats(predictions, targets, fn)
  if x.ndim < 2:
    raise ValueError(f"{fn}: predictions must be [batch, ..., num_classes], got {x.shape}")
  log_p = _checks.log_probabilities(x, from_logits)
  positive = t > 0
  # Double `where`: log(0) must not reach the gradient even on the unused branch.
  log_t = jnp.log(jnp.where(positive, t, 1.0))
  kl = jnp.sum(jnp.where(positive, t * (log_t - log_p), 0.0), axis=-1)
  return _checks.mean_per_example(kl)


def focal(predictions: jax.Array, targets: jax.Array, *,
          from_logits: bool = True,
          gamma: float = 2.0,
          alpha: float | Sequence[float] | None = 0.25,
          label_smoothing: float = 0.0) -> jax.Array:
  """Softmax focal loss, ``-sum_c alpha_c (1 - p_c)^gamma t_c log p_c``.

  Keras ``CategoricalFocalCrossentropy`` (same defaults: alpha 0.25, gamma 2).
  As in Keras the modulating factor uses ``p`` clipped to [1e-7, 1 - 1e-7]; the
  log-probability comes from ``log_softmax`` when given logits. ``gamma=0,
  alpha=None`` is categorical cross-entropy.

  Args:
    predictions: ``[batch, ..., num_classes]`` logits (or probabilities).
    targets: ``[batch, ..., num_classes]`` one-hot or probability targets.
    from_logits: whether `predictions` are logits.
    gamma: focusing parameter >= 0.
    alpha: a scalar or a ``[num_classes]`` per-class weight; None means 1.
    label_smoothing: ``a`` in [0, 1]; targets become ``(1 - a) t + a / C``.

  Returns:
    ``[batch]`` per-example loss (mean over axes between batch and classes).

  Examples:
    >>> import jax.numpy as jnp
    >>> focal(jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([[1.0, 0.0]]), alpha=None)
    Array([0.1732868], dtype=float32)

  References:
    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
  """
  fn = "focal"
  x, t = _checks.floats(predictions, targets, fn)
  _checks.check_fraction(label_smoothing, "label_smoothing", fn)
  if x.ndim < 2:
    raise ValueError(f"{fn}: predictions must be [batch, ..., num_classes], got {x.shape}")
  if isinstance(gamma, (int, float)) and gamma < 0:
    raise ValueError(f"{fn}: gamma={gamma} must be >= 0")
  if label_smoothing:
    t = optax.losses.smooth_labels(t, label_smoothing)
  log_p = _checks.log_probabilities(x, from_logits)
  p = _checks.clip_probabilities(jnp.exp(log_p))
  weight = (1.0 - p) ** gamma
  if alpha is not None:
    weight = weight * _checks.per_class_vector(alpha, x.shape[-1], "alpha", fn, x.dtype)
  return _checks.mean_per_example(-jnp.sum(weight * t * log_p, axis=-1))


def binary_focal(predictions: jax.Array, targets: jax.Array, *,
                 from_logits: bool = True,
                 alpha: float | None = 0.25,
                 gamma: float = 2.0) -> jax.Array:
  """Sigmoid focal loss, ``alpha_t (1 - p_t)^gamma BCE``, averaged per example.

  torchvision ``ops.sigmoid_focal_loss`` (alpha 0.25, gamma 2), computed by optax
  ``sigmoid_focal_loss`` in log space. ``p_t = p`` where ``t = 1`` and ``1 - p``
  where ``t = 0``; ``alpha_t = alpha t + (1 - alpha)(1 - t)``. ``alpha=None`` (or
  a negative alpha, as in torchvision) disables the alpha weighting.

  Args:
    predictions: ``[batch, ...]`` logits (or probabilities), one per binary label.
    targets: ``[batch, ...]`` labels in {0, 1} (soft labels are accepted).
    from_logits: whether `predictions` are logits.
    alpha: weight of positives in [0, 1], or None.
    gamma: focusing parameter >= 0.

  Returns:
    ``[batch]`` per-example loss (mean over non-batch axes).

  Examples:
    >>> import jax.numpy as jnp
    >>> binary_focal(jnp.array([[0.0]]), jnp.array([[1.0]]))
    Array([0.0433217], dtype=float32)

  References:
    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
  """
  fn = "binary_focal"
  x, t = _checks.floats(predictions, targets, fn)
  if isinstance(gamma, (int, float)) and gamma < 0:
    raise ValueError(f"{fn}: gamma={gamma} must be >= 0")
  if isinstance(alpha, (int, float)):
    if alpha < 0:
      alpha = None
    else:
      _checks.check_fraction(alpha, "alpha", fn)
  logits = _binary_logits(x, from_logits)
  loss = optax.losses.sigmoid_focal_loss(logits, t, alpha=alpha, gamma=gamma)
  return _checks.mean_per_example(loss)


def poly1_cross_entropy(predictions: jax.Array, targets: jax.Array, *,
                        from_logits: bool = True,
                        epsilon: float = 2.0,
                        label_smoothing: float = 0.0) -> jax.Array:
  """Poly-1 loss: cross-entropy plus ``epsilon (1 - p_t)``, ``p_t = sum_c t_c p_c``.

  From logits it is optax ``poly_loss_cross_entropy``; ``epsilon=0`` is
  categorical cross-entropy. The default epsilon 2.0 is the paper's ImageNet
  setting. Smoothed targets enter both terms, as in the paper's code.

  Args:
    predictions: ``[batch, ..., num_classes]`` logits (or probabilities).
    targets: ``[batch, ..., num_classes]`` one-hot or probability targets.
    from_logits: whether `predictions` are logits.
    epsilon: weight of the first polynomial term (>= -1 keeps it a valid loss).
    label_smoothing: ``a`` in [0, 1]; targets become ``(1 - a) t + a / C``.

  Returns:
    ``[batch]`` per-example loss (mean over axes between batch and classes).

  Examples:
    >>> import jax.numpy as jnp
    >>> poly1_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 0.0]]))
    Array([1.6931472], dtype=float32)

  References:
    Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification
    Loss Functions", ICLR 2022.
  """
  fn = "poly1_cross_entropy"
  x, t = _checks.floats(predictions, targets, fn)
  _checks.check_fraction(label_smoothing, "label_smoothing", fn)
  if x.ndim < 2:
    raise ValueError(f"{fn}: predictions must be [batch, ..., num_classes], got {x.shape}")
  if label_smoothing:
    t = optax.losses.smooth_labels(t, label_smoothing)
  if from_logits:
    loss = optax.losses.poly_loss_cross_entropy(x, t, epsilon=epsilon)
  else:
    log_p = _checks.normalized_log_probabilities(x)
    p_t = jnp.sum(t * jnp.exp(log_p), axis=-1)
    loss = -jnp.sum(t * log_p, axis=-1) + epsilon * (1.0 - p_t)
  return _checks.mean_per_example(loss)
