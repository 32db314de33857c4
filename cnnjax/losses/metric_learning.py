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


def supervised_contrastive(predictions: jax.Array, targets: jax.Array, *,
                           temperature: float = 0.1,
                           where: jax.Array | None = None) -> jax.Array:
  """Supervised contrastive loss (SupCon, ``L_out``) over one batch of embeddings.

  With ``z_i`` the L2-normalised embeddings, ``A(i)`` the other valid examples and
  ``P(i)`` those of them with ``i``'s label, anchor ``i`` costs

      -1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / t) / sum_{a in A(i)} exp(z_i . z_a / t) )

  and 0 when ``P(i)`` is empty (or ``i`` is not valid). Every pair of the batch takes
  part, so there is no mining. The paper's equation 2 exactly: the official code's
  extra factor ``temperature / base_temperature`` (1 at its defaults) is left out.

  Args:
    predictions: ``[batch, dim]`` embeddings (normalised here, with a zero vector
      mapped to zero).
    targets: ``[batch]`` integer class labels.
    temperature: ``t > 0``.
    where: optional ``[batch]`` mask of the valid examples (padding is 0); the
      others are neither anchors nor candidates.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> supervised_contrastive(z, jnp.array([0, 0, 1]), temperature=1.0)  # log(1 + e) - 1
    Array([0.31326163, 0.31326163, 0.        ], dtype=float32)

  References:
    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, eq. 2.
  """
  fn = "supervised_contrastive"
  x = _checks.as_array(predictions, "predictions", fn)
  y = _checks.as_array(targets, "targets", fn)
  _checks.check_float(x, "predictions", fn)
  if x.ndim != 2:
    raise ValueError(f"{fn}: predictions must be [batch, dim], got shape {x.shape}")
  if y.shape != x.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"{fn}: targets must be [batch] = {x.shape[:1]} integer labels, got "
                     f"shape {y.shape} and dtype {y.dtype}")
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"{fn}: temperature={temperature} must be > 0")
  valid = jnp.ones(x.shape[:1], bool) if where is None else jnp.asarray(where) > 0
  z = x / jnp.maximum(_checks.safe_norm(x, 2, axis=-1), 1e-12)[:, None]
  logits = (z @ z.T) / temperature
  others = valid[None, :] & valid[:, None] & ~jnp.eye(x.shape[0], dtype=bool)
  positives = others & (y[:, None] == y[None, :])
  # A large negative number, not -inf, for the excluded candidates: exp() gives an exact
  # 0 and the gradient stays finite in rows without any candidate.
  log_denominator = jax.nn.logsumexp(jnp.where(others, logits, -1e30), axis=1)
  log_prob = logits - log_denominator[:, None]
  n_pos = jnp.sum(positives, axis=1)
  loss = -jnp.sum(jnp.where(positives, log_prob, 0.0), axis=1) / jnp.maximum(n_pos, 1)
  return jnp.where(valid & (n_pos > 0), loss, 0.0)
