"""Metric-learning losses for Siamese and triplet networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cnnjax.losses import _checks


def contrastive(predictions: jax.Array, targets: jax.Array, *,
                margin: float = 1.0) -> jax.Array:
  """Contrastive loss, ``y d^2 + (1 - y) max(margin - d, 0)^2`` averaged per example.

  Similar pairs (``y = 1``) are pulled together, dissimilar ones (``y = 0``)
  pushed at least `margin` apart. Note the label convention: Hadsell et al. use
  ``y = 0`` for similar pairs; here 1 means similar.

  Args:
    predictions: ``[batch, ...]`` pair distances ``d >= 0`` (e.g. Euclidean
      distance between the two embeddings).
    targets: ``[batch, ...]`` 1 for a similar pair, 0 for a dissimilar one.
    margin: the distance beyond which dissimilar pairs cost nothing.

  Returns:
    ``[batch]`` per-example loss (mean over non-batch axes).

  Examples:
    >>> import jax.numpy as jnp
    >>> contrastive(jnp.array([0.5, 0.25]), jnp.array([1.0, 0.0]))
    Array([0.25  , 0.5625], dtype=float32)

  References:
    Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant
    Mapping", CVPR 2006.
  """
  d, y = _checks.floats(predictions, targets, "contrastive")
  loss = y * jnp.square(d) + (1.0 - y) * jnp.square(jax.nn.relu(margin - d))
  return _checks.mean_per_example(loss)


def _pairwise_distance(x1, x2, p, eps):
  # PyTorch's pairwise_distance adds eps to the difference, not to the norm.
  return _checks.safe_norm(x1 - x2 + eps, p, axis=-1)


def triplet_margin(predictions: tuple[jax.Array, jax.Array, jax.Array],
                   targets: None = None, *,
                   margin: float = 1.0, p: float = 2.0, eps: float = 1e-6,
                   swap: bool = False) -> jax.Array:
  """PyTorch ``TripletMarginLoss``: ``max(d(a, p) - d(a, n) + margin, 0)``.

  ``d(x, y) = ||x - y + eps||_p`` as in ``torch.nn.functional.pairwise_distance``
  (optax ``triplet_margin_loss`` puts eps inside the norm instead). The norm has
  a finite gradient at 0.

  Args:
    predictions: ``(anchor, positive, negative)`` embeddings, each ``[batch, dim]``.
    targets: unused (the roles are given by position); must be None.
    margin: required gap between the negative and positive distances.
    p: norm degree (>= 1).
    eps: added to the difference vectors, as PyTorch does.
    swap: use ``min(d(a, n), d(p, n))`` as the negative distance (Balntas et al.).

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> a, pos, neg = jnp.array([[0.0, 0.0]]), jnp.array([[3.0, 4.0]]), jnp.array([[1.0, 0.0]])
    >>> triplet_margin((a, pos, neg), eps=0.0)
    Array([5.], dtype=float32)

  References:
    Balntas et al., "Learning local feature descriptors with triplets and shallow
    convolutional neural networks", BMVC 2016; Schroff et al., "FaceNet", CVPR 2015.
  """
  fn = "triplet_margin"
  if not isinstance(predictions, (tuple, list)) or len(predictions) != 3:
    raise TypeError(f"{fn}: predictions must be an (anchor, positive, negative) triple, "
                    f"got {type(predictions).__name__}")
  if targets is not None:
    raise ValueError(f"{fn}: targets must be None (the triple's order gives the roles)")
  a, pos = _checks.floats(predictions[0], predictions[1], fn, names=("anchor", "positive"))
  _, neg = _checks.floats(predictions[0], predictions[2], fn, names=("anchor", "negative"))
  _checks.check_float(_checks.as_array(predictions[2], "negative", fn), "negative", fn)
  if a.ndim != 2:
    raise ValueError(f"{fn}: embeddings must be [batch, dim], got shape {a.shape}")
  if isinstance(p, (int, float)) and p < 1:
    raise ValueError(f"{fn}: p={p} must be >= 1")
  d_pos = _pairwise_distance(a, pos, p, eps)
  d_neg = _pairwise_distance(a, neg, p, eps)
  if swap:
    d_neg = jnp.minimum(d_neg, _pairwise_distance(pos, neg, p, eps))
  return jax.nn.relu(d_pos - d_neg + margin)
