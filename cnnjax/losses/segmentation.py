"""Dense-prediction (segmentation) losses: overlap measures per example.

Each example's score is computed over *all* its non-batch axes at once (pixels
and channels), the "global" soft Dice of V-Net. Logits go through a sigmoid
(``activation="sigmoid"``: binary or multi-label masks) or a softmax over the last
axis (``activation="softmax"``: one-hot class maps).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import optax

from cnnjax.losses import _checks

Activation = Literal["sigmoid", "softmax"]
_ACTIVATIONS = ("sigmoid", "softmax")


def _probabilities(x: jax.Array, from_logits: bool, activation: str, fn: str) -> jax.Array:
  if activation not in _ACTIVATIONS:
    raise ValueError(f"{fn}: activation={activation!r} is not one of {list(_ACTIVATIONS)}")
  if not from_logits:
    return x
  if activation == "softmax":
    if x.ndim < 2:
      raise ValueError(f"{fn}: softmax needs [batch, ..., num_classes], got {x.shape}")
    return jax.nn.softmax(x, axis=-1)
  return jax.nn.sigmoid(x)


def tversky(predictions: jax.Array, targets: jax.Array, *,
            from_logits: bool = True, activation: Activation = "sigmoid",
            alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0) -> jax.Array:
  """Tversky loss, ``1 - (TP + s) / (TP + alpha FP + beta FN + s)`` per example.

  With soft counts ``TP = sum(p t)``, ``FP = sum(p (1 - t))``, ``FN = sum((1 - p) t)``
  over all non-batch axes. ``alpha = beta = 0.5`` is the Dice loss (with half
  its `smooth`); a larger
  `beta` penalises missed foreground more (small structures).

  Args:
    predictions: ``[batch, ...]`` logits (or probabilities).
    targets: ``[batch, ...]`` binary or one-hot masks, same shape.
    from_logits: whether `predictions` are logits.
    activation: ``"sigmoid"`` or ``"softmax"`` (last axis), applied to logits.
    alpha: weight of false positives.
    beta: weight of false negatives.
    smooth: added to numerator and denominator; keeps empty masks at loss 0.

  Returns:
    ``[batch]`` per-example loss in [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> tversky(jnp.array([[1.0, 1.0, 0.0]]), jnp.array([[1.0, 0.0, 0.0]]),
    ...         from_logits=False, alpha=0.7, beta=0.3, smooth=0.0)
    Array([0.41176474], dtype=float32)

  References:
    Salehi, Erdogmus & Gholipour, "Tversky loss function for image segmentation
    using 3D fully convolutional deep networks", MLMI 2017.
  """
  fn = "tversky"
  x, t = _checks.floats(predictions, targets, fn)
  p = _probabilities(x, from_logits, activation, fn)
  tp = _checks.sum_per_example(p * t)
  fp = _checks.sum_per_example(p * (1.0 - t))
  fn_ = _checks.sum_per_example((1.0 - p) * t)
  return 1.0 - (tp + smooth) / (tp + alpha * fp + beta * fn_ + smooth)


def dice(predictions: jax.Array, targets: jax.Array, *,
         from_logits: bool = True, activation: Activation = "sigmoid",
         smooth: float = 1.0) -> jax.Array:
  """Soft Dice loss, ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` per example.

  Sums run over every non-batch axis (pixels and channels together).

  Args:
    predictions: ``[batch, ...]`` logits (or probabilities).
    targets: ``[batch, ...]`` binary or one-hot masks, same shape.
    from_logits: whether `predictions` are logits.
    activation: ``"sigmoid"`` or ``"softmax"`` (last axis), applied to logits.
    smooth: added to numerator and denominator (Laplace smoothing); an empty
      target with an empty prediction gives loss 0.

  Returns:
    ``[batch]`` per-example loss in [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> dice(jnp.array([[1.0, 1.0, 0.0, 0.0]]), jnp.array([[1.0, 0.0, 0.0, 0.0]]),
    ...      from_logits=False, smooth=1.0)
    Array([0.25], dtype=float32)

  References:
    Milletari, Navab & Ahmadi, "V-Net", 3DV 2016.
  """
  fn = "dice"
  x, t = _checks.floats(predictions, targets, fn)
  p = _probabilities(x, from_logits, activation, fn)
  inter = _checks.sum_per_example(p * t)
  total = _checks.sum_per_example(p) + _checks.sum_per_example(t)
  return 1.0 - (2.0 * inter + smooth) / (total + smooth)


def dice_cross_entropy(predictions: jax.Array, targets: jax.Array, *,
                       from_logits: bool = True, activation: Activation = "sigmoid",
                       smooth: float = 1.0, dice_weight: float = 1.0,
                       ce_weight: float = 1.0) -> jax.Array:
  """``dice_weight * dice + ce_weight * cross-entropy``, the common U-Net combination.

  The cross-entropy matches the activation: binary cross-entropy per element for
  ``"sigmoid"``, categorical cross-entropy per position for ``"softmax"``; each is
  averaged over the example's positions.

  Args:
    predictions: ``[batch, ...]`` logits (or probabilities).
    targets: ``[batch, ...]`` binary or one-hot masks, same shape.
    from_logits: whether `predictions` are logits.
    activation: ``"sigmoid"`` or ``"softmax"`` (last axis).
    smooth: Dice smoothing.
    dice_weight: weight of the Dice term.
    ce_weight: weight of the cross-entropy term.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> dice_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 0.0]]))
    Array([1.0264804], dtype=float32)
  """
  fn = "dice_cross_entropy"
  x, t = _checks.floats(predictions, targets, fn)
  d = dice(x, t, from_logits=from_logits, activation=activation, smooth=smooth)
  if activation == "softmax":
    if from_logits:
      ce = optax.losses.softmax_cross_entropy(x, t)
    else:
      ce = -jnp.sum(t * _checks.normalized_log_probabilities(x), axis=-1)
  else:
    logits = x
    if not from_logits:
      p = _checks.clip_probabilities(x)
      logits = jnp.log(p) - jnp.log1p(-p)
    ce = optax.losses.sigmoid_binary_cross_entropy(logits, t)
  return dice_weight * d + ce_weight * _checks.mean_per_example(ce)
