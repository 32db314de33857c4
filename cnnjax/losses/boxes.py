"""Bounding-box overlap losses: IoU and generalized IoU, one value per example.

Boxes are ``(y0, x0, y1, x1)`` on the last axis (the order of TensorFlow's object
detection API; any unit, pixels here). Each box is first put in order, ``(min(y0, y1),
min(x0, x1), max(y0, y1), max(x0, x1))``, as Rezatofighi et al.'s Algorithm 1 does for
the predicted box, so a regressor whose corners cross still gets a well-defined loss
and a gradient. Areas of width or height zero are allowed: unions and enclosing areas
get ``eps`` added in the denominator (torchvision's ``generalized_box_iou_loss`` does
the same with ``eps=1e-7``), so disjoint, degenerate and identical-point boxes all give
finite values and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cnnjax.losses import _checks


def _ordered(boxes: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  y0, x0, y1, x1 = jnp.moveaxis(boxes, -1, 0)
  return jnp.minimum(y0, y1), jnp.minimum(x0, x1), jnp.maximum(y0, y1), jnp.maximum(x0, x1)


def _area(y0, x0, y1, x1) -> jax.Array:
  return (y1 - y0) * (x1 - x0)


def _check_boxes(predictions, targets, fn: str) -> tuple[jax.Array, jax.Array]:
  p, t = _checks.floats(predictions, targets, fn)
  if p.shape[-1] != 4 or p.ndim < 2:
    raise ValueError(f"{fn}: boxes must be [batch, ..., 4] as (y0, x0, y1, x1), got {p.shape}")
  return p, t


def _overlaps(p: jax.Array, t: jax.Array, eps: float) -> tuple[jax.Array, jax.Array, tuple]:
  """(IoU, union, ordered corners of both) of box pairs ``[..., 4]``."""
  pa, ta = _ordered(p), _ordered(t)
  inter_h = jnp.maximum(jnp.minimum(pa[2], ta[2]) - jnp.maximum(pa[0], ta[0]), 0.0)
  inter_w = jnp.maximum(jnp.minimum(pa[3], ta[3]) - jnp.maximum(pa[1], ta[1]), 0.0)
  inter = inter_h * inter_w
  union = _area(*pa) + _area(*ta) - inter
  return inter / (union + eps), union, (pa, ta)


def box_iou(predictions: jax.Array, targets: jax.Array, *, eps: float = 1e-7) -> jax.Array:
  """Intersection over union of box pairs, ``[..., 4] -> [...]`` (no reduction).

  Examples:
    >>> import jax.numpy as jnp
    >>> box_iou(jnp.array([0.0, 0.0, 2.0, 2.0]), jnp.array([1.0, 1.0, 3.0, 3.0]), eps=0.0)
    Array(0.14285715, dtype=float32)
  """
  p = jnp.asarray(predictions, jnp.result_type(predictions, jnp.float32))
  return _overlaps(p, jnp.asarray(targets, p.dtype), eps)[0]


def iou(predictions: jax.Array, targets: jax.Array, *, eps: float = 1e-7) -> jax.Array:
  """IoU loss, ``1 - |A ∩ B| / |A ∪ B|`` per box pair, averaged over the example's boxes.

  In [0, 1]; 1 for disjoint boxes, whose gradient is then 0 (the shortcoming GIoU fixes).

  Args:
    predictions: ``[batch, ..., 4]`` predicted boxes (y0, x0, y1, x1).
    targets: ``[batch, ..., 4]`` target boxes, same shape.
    eps: added to the union in the denominator.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> iou(jnp.array([[0.0, 0.0, 2.0, 2.0]]), jnp.array([[1.0, 1.0, 3.0, 3.0]]), eps=0.0)
    Array([0.85714287], dtype=float32)

  References:
    Yu, Jiang, Wang, Cao & Huang, "UnitBox: An Advanced Object Detection Network",
    ACM MM 2016 (the IoU loss; its ``-ln IoU`` form is not used here).
  """
  p, t = _check_boxes(predictions, targets, "iou")
  return _checks.mean_per_example(1.0 - _overlaps(p, t, eps)[0])


def giou(predictions: jax.Array, targets: jax.Array, *, eps: float = 1e-7) -> jax.Array:
  """Generalized IoU loss, ``1 - IoU + |C \\ (A ∪ B)| / |C|``, averaged per example.

  ``C`` is the smallest box enclosing both. In [0, 2]; unlike the IoU loss it still
  decreases as disjoint boxes move towards each other.

  Args:
    predictions: ``[batch, ..., 4]`` predicted boxes (y0, x0, y1, x1).
    targets: ``[batch, ..., 4]`` target boxes, same shape.
    eps: added to the union and to ``|C|`` in the denominators.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> giou(jnp.array([[0.0, 0.0, 1.0, 1.0]]), jnp.array([[0.0, 2.0, 1.0, 3.0]]), eps=0.0)
    Array([1.3333334], dtype=float32)

  References:
    Rezatofighi, Tsoi, Gwak, Sadeghian, Reid & Savarese, "Generalized Intersection over
    Union: A Metric and A Loss for Bounding Box Regression", CVPR 2019 (Algorithm 1/2).
  """
  p, t = _check_boxes(predictions, targets, "giou")
  overlap, union, (pa, ta) = _overlaps(p, t, eps)
  enclosing = _area(jnp.minimum(pa[0], ta[0]), jnp.minimum(pa[1], ta[1]),
                    jnp.maximum(pa[2], ta[2]), jnp.maximum(pa[3], ta[3]))
  return _checks.mean_per_example(1.0 - overlap + (enclosing - union) / (enclosing + eps))
