"""Choosing, inside a batch, the positive and the negative each anchor is trained against.

Pair and triplet losses need, for every anchor ``i`` of a batch of embeddings, a
positive ``p(i)`` (another example of its class) and a negative ``n(i)`` (an example of
another class). `mine` picks them from the batch's own distance matrix, so it runs inside
the compiled step:

* ``random``: a uniformly random positive and negative among the valid candidates,
  chosen by two numbers in [0, 1) per row that the input pipeline draws from
  ``(seed, epoch, step)`` (``pick``), so a run is deterministic;
* ``batch_hard``: the farthest positive and the closest negative (Hermans, Beyer &
  Leibe 2017, "batch hard");
* ``semi_hard``: the random positive, and the closest negative that is still farther
  than it, ``d(i, n) > d(i, p)`` (Schroff et al. 2015, eq. 4 and section 3.2); when no
  negative is farther, the farthest negative, the rule of TensorFlow Addons'
  ``triplet_semihard_loss``.

Indices carry no gradient; the loss differentiates through the distances of the chosen
pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cnnjax.losses import _checks

MINING = ("random", "batch_hard", "semi_hard")


def pairwise_distances(x: jax.Array) -> jax.Array:
  """Euclidean distances ``[B, B]`` between the rows of ``x`` ``[B, D]``.

  Computed from the differences (not ``|a|^2 + |b|^2 - 2 a.b``, which loses the small
  distances to cancellation), with a zero gradient where a distance is 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> pairwise_distances(jnp.array([[0.0, 0.0], [3.0, 4.0]]))
    Array([[0., 5.],
           [5., 0.]], dtype=float32)
  """
  return _checks.safe_norm(x[:, None, :] - x[None, :, :], 2, axis=-1)


def _kth_true(mask: jax.Array, u: jax.Array) -> jax.Array:
  """Per row, the index of the ``floor(u * m)``-th True entry (m = Trues in the row)."""
  m = jnp.sum(mask, axis=1)
  k = jnp.minimum(jnp.floor(u * m).astype(jnp.int32), jnp.maximum(m - 1, 0))
  return jnp.argmax(jnp.cumsum(mask, axis=1) > k[:, None], axis=1)


def candidates(labels: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``(positive, negative)`` ``[B, B]`` masks: same label (not itself) / other label, both
  valid."""
  b = labels.shape[0]
  valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid) > 0
  both = valid[:, None] & valid[None, :]
  same = labels[:, None] == labels[None, :]
  return both & same & ~jnp.eye(b, dtype=bool), both & ~same


def mine(distances: jax.Array, labels: jax.Array, *, mode: str, pick: jax.Array,
         valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The positive and negative of every anchor, chosen by ``mode`` from ``distances``.

  Args:
    distances: ``[B, B]`` pairwise distances of the batch's embeddings.
    labels: ``[B]`` integer labels.
    mode: one of `MINING`.
    pick: ``[B, 2]`` numbers in [0, 1): which random positive (column 0) and random
      negative (column 1) a row takes.
    valid: optional ``[B]`` mask of the real examples (padding is never chosen).

  Returns:
    ``(positive, negative, ok)``: int32 indices ``[B]`` and a bool ``[B]`` that is
    False for rows without a positive or a negative (or not valid); their indices are
    meaningless.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.0], [1.0], [3.0], [1.5]])
    >>> p, n, ok = mine(pairwise_distances(x), jnp.array([0, 0, 0, 1]), mode="batch_hard",
    ...                 pick=jnp.zeros((4, 2)))
    >>> p.tolist(), n.tolist(), ok.tolist()
    ([2, 2, 0, 0], [3, 3, 3, 1], [True, True, True, False])
  """
  _checks.check_float(distances, "distances", "mine")
  if mode not in MINING:
    raise ValueError(f"mining={mode!r} is not accepted; expected one of {list(MINING)}")
  d = jax.lax.stop_gradient(distances)
  pos_mask, neg_mask = candidates(labels, valid)
  ok = jnp.any(pos_mask, axis=1) & jnp.any(neg_mask, axis=1)
  farthest_negative = jnp.argmax(jnp.where(neg_mask, d, -jnp.inf), axis=1)
  if mode == "batch_hard":
    positive = jnp.argmax(jnp.where(pos_mask, d, -jnp.inf), axis=1)
    negative = jnp.argmin(jnp.where(neg_mask, d, jnp.inf), axis=1)
  else:
    positive = _kth_true(pos_mask, pick[:, 0])
    if mode == "random":
      negative = _kth_true(neg_mask, pick[:, 1])
    else:
      d_ap = jnp.take_along_axis(d, positive[:, None], axis=1)
      outside = neg_mask & (d > d_ap)
      negative = jnp.where(jnp.any(outside, axis=1),
                           jnp.argmin(jnp.where(outside, d, jnp.inf), axis=1),
                           farthest_negative)
  return positive.astype(jnp.int32), negative.astype(jnp.int32), ok
