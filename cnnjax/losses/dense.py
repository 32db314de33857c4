"""Per-pixel losses for segmentation: ``(logits [B, ..., C], labels [B, ...]) -> [B]``.

`for_segmentation` adapts the losses that fit integer class maps, reducing every
example's pixels inside the loss to one value, and honours ``ignore_index`` in all of
them (a pixel with that label counts nowhere):

* ``sparse_categorical_cross_entropy``, ``focal``: the per-pixel loss averaged over the
  example's valid pixels (PyTorch's ``CrossEntropyLoss(ignore_index=...)`` mean, taken
  per example).
* ``dice``, ``tversky``: computed on each class's probability map over the example's
  valid pixels, then averaged over the ``C`` classes (background included): the
  per-sample, per-class soft Dice of nnU-Net (Isensee et al. 2021). Over all classes at
  once, the global Dice of `cnnjax.losses.dice` would reduce to ``mean(1 - p_y)`` for
  softmax outputs (``sum(p) + sum(t) = 2 x pixels``), blind to class sizes.
* ``dice_cross_entropy``: ``dice_weight`` times that Dice plus ``ce_weight`` times the
  cross-entropy above.

Options are those of the underlying loss (`cnnjax.losses.options_of`) plus
``ignore_index``; ``from_logits`` and ``activation`` are fixed (softmax over the last axis).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cnnjax.losses import _checks
from cnnjax.losses.classification import focal, sparse_categorical_cross_entropy
from cnnjax.losses.segmentation import dice, tversky

SEGMENTATION_LOSSES = ("dice", "dice_cross_entropy", "focal", "sparse_categorical_cross_entropy",
                       "tversky")
PixelLoss = Callable[[jax.Array, jax.Array], jax.Array]


def _per_class(loss_fn, probs: jax.Array, onehot: jax.Array, **opts) -> jax.Array:
  """``loss_fn`` on each class's map ``[B, ...]`` (probabilities in), averaged over classes."""
  per_class = jax.vmap(lambda p, t: loss_fn(p, t, from_logits=False, **opts),
                       in_axes=-1, out_axes=-1)(probs, onehot)
  return jnp.mean(per_class, axis=-1)


def _pixel_mean(loss_fn, logits: jax.Array, onehot: jax.Array, valid: jax.Array,
                **opts) -> jax.Array:
  """A per-position classification loss averaged over each example's valid pixels."""
  b, c = logits.shape[0], logits.shape[-1]
  per_pixel = loss_fn(logits.reshape(-1, c), onehot.reshape(-1, c), **opts).reshape(b, -1)
  return _checks.masked_mean_per_example(per_pixel, valid.reshape(b, -1))


def _check_inputs(logits, labels, num_classes: int, fn: str) -> tuple[jax.Array, jax.Array]:
  x, y = _checks.int_labels(logits, labels, fn)
  if x.shape[-1] != num_classes or x.ndim < 3:
    raise ValueError(f"{fn}: logits must be [batch, ..., {num_classes}] per pixel, got shape "
                     f"{x.shape}")
  return x, y


def pixel_loss(canonical: str, num_classes: int, options: dict[str, Any]) -> PixelLoss:
  """The per-example loss of `for_segmentation` for checked ``options`` (no validation)."""
  opts = dict(options)
  ignore = opts.pop("ignore_index", None)
  fn = f"{canonical} (per pixel)"

  def per_example(logits: jax.Array, labels: jax.Array) -> jax.Array:
    x, y = _check_inputs(logits, labels, num_classes, fn)
    if canonical == "sparse_categorical_cross_entropy":
      return sparse_categorical_cross_entropy(x, y, ignore_index=ignore, **opts)
    valid = jnp.ones(y.shape, bool) if ignore is None else y != ignore
    onehot = jax.nn.one_hot(jnp.where(valid, y, 0), num_classes, dtype=x.dtype)
    onehot = onehot * valid[..., None]
    if canonical == "focal":
      return _pixel_mean(focal, x, onehot, valid, **opts)
    probs = jax.nn.softmax(x, axis=-1) * valid[..., None]
    if canonical == "tversky":
      return _per_class(tversky, probs, onehot, **opts)
    smooth = {"smooth": opts["smooth"]} if "smooth" in opts else {}
    overlap = _per_class(dice, probs, onehot, **smooth)
    if canonical == "dice":
      return overlap
    ce = sparse_categorical_cross_entropy(x, y, ignore_index=ignore)
    return opts.get("dice_weight", 1.0) * overlap + opts.get("ce_weight", 1.0) * ce

  per_example.__name__ = f"{canonical}_per_pixel"
  return per_example
