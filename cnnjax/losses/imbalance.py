"""Losses for long-tailed classes: logit adjustment, LDAM, class-balanced weights.

The per-class statistics (``class_priors``, ``class_counts``) are those of the training
split; `cnnjax.tasks.Classification` fills them in from the (possibly subsampled) data
unless the config sets them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.losses import _checks


def class_balanced_weights(counts: Sequence[int] | np.ndarray, beta: float = 0.9999
                           ) -> np.ndarray:
  """Class-balanced weights ``w_c = (1 - beta) / (1 - beta^n_c)``, normalised to sum to C.

  ``1 / w_c`` is the "effective number" of examples of class ``c``; ``beta = 0`` gives
  equal weights, ``beta -> 1`` inverse class frequency. Pass the result as
  ``class_weights`` of `sparse_categorical_cross_entropy` or ``alpha`` of `focal`.

  Args:
    counts: ``[num_classes]`` training examples per class (> 0).
    beta: in [0, 1).

  Returns:
    float64 ``[num_classes]`` weights summing to ``num_classes``.

  Examples:
    >>> class_balanced_weights([100, 10], beta=0.9).round(4)
    array([0.7889, 1.2111])

  References:
    Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019.
  """
  n = np.asarray(counts, np.float64)
  if n.ndim != 1 or (n <= 0).any():
    raise ValueError(f"class_balanced_weights: counts={counts!r} must be a vector of "
                     "positive class counts")
  if not 0.0 <= beta < 1.0:
    raise ValueError(f"class_balanced_weights: beta={beta!r} must lie in [0, 1)")
  w = (1.0 - beta) / (1.0 - np.power(beta, n))
  return w / w.sum() * len(n)


def _priors(class_priors, num_classes: int, fn: str) -> jax.Array:
  if class_priors is None:
    raise ValueError(f"{fn}: class_priors is required ([num_classes] training frequencies)")
  pi = np.asarray(class_priors, np.float64)
  if pi.shape != (num_classes,) or (pi <= 0).any():
    raise ValueError(f"{fn}: class_priors must be {num_classes} positive numbers, got "
                     f"{class_priors!r}")
  return jnp.asarray(np.log(pi / pi.sum()), jnp.float32)


def logit_adjusted_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                                 class_priors: Sequence[float] | None = None,
                                 tau: float = 1.0) -> jax.Array:
  """Logit-adjusted cross-entropy ``CE(z + tau log pi, y)``.

  Adding the log prior to the logits during training (not at prediction) makes the
  argmax of the plain logits estimate the balanced-error Bayes classifier.

  Args:
    logits: ``[batch, ..., num_classes]``.
    labels: ``[batch, ...]`` integer labels.
    class_priors: ``[num_classes]`` training class frequencies (or counts: they are
      normalised to sum to 1).
    tau: scale of the adjustment (1 in the paper).

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> logit_adjusted_cross_entropy(jnp.zeros((1, 2)), jnp.array([1]), class_priors=[0.8, 0.2])
    Array([1.609438], dtype=float32)

  References:
    Menon et al., "Long-Tail Learning via Logit Adjustment", ICLR 2021.
  """
  fn = "logit_adjusted_cross_entropy"
  x, y = _checks.int_labels(logits, labels, fn)
  adjusted = x + tau * _priors(class_priors, x.shape[-1], fn).astype(x.dtype)
  log_p = jax.nn.log_softmax(adjusted, axis=-1)
  return _checks.mean_per_example(-jnp.take_along_axis(log_p, y[..., None], axis=-1)[..., 0])


def ldam_margins(class_counts: Sequence[int], max_margin: float = 0.5) -> np.ndarray:
  """LDAM's per-class margins ``m_c ∝ n_c^(-1/4)``, the largest equal to ``max_margin``.

  Examples:
    >>> ldam_margins([16, 1], max_margin=0.5).tolist()
    [0.25, 0.5]
  """
  n = np.asarray(class_counts, np.float64)
  if n.ndim != 1 or (n <= 0).any():
    raise ValueError(f"ldam: class_counts={class_counts!r} must be positive class counts")
  m = 1.0 / np.sqrt(np.sqrt(n))
  return m * (max_margin / m.max())


def ldam(logits: jax.Array, labels: jax.Array, *,
         class_counts: Sequence[int] | None = None, max_margin: float = 0.5,
         scale: float = 30.0) -> jax.Array:
  """Label-distribution-aware margin loss ``CE(s (z - m_y e_y), y)``, as Cao et al.'s code.

  The true class's logit is lowered by its margin ``m_y`` (`ldam_margins`), then every
  logit is multiplied by ``scale``. Cao et al. pair it with a normalised (cosine) last
  layer, whose logits lie in [-1, 1]; with a plain dense head, as cnnjax's models have,
  ``scale`` multiplies unbounded logits.

  Args:
    logits: ``[batch, ..., num_classes]``.
    labels: ``[batch, ...]`` integer labels.
    class_counts: ``[num_classes]`` training examples per class.
    max_margin: the margin of the rarest class.
    scale: ``s``, the logit scale.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> ldam(jnp.zeros((1, 2)), jnp.array([1]), class_counts=[16, 1], scale=1.0)
    Array([0.974077], dtype=float32)

  References:
    Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin
    Loss", NeurIPS 2019 (code: github.com/kaidic/LDAM-DRW).
  """
  fn = "ldam"
  x, y = _checks.int_labels(logits, labels, fn)
  if class_counts is None:
    raise ValueError(f"{fn}: class_counts is required ([num_classes] training counts)")
  if len(class_counts) != x.shape[-1]:
    raise ValueError(f"{fn}: class_counts has {len(class_counts)} entries for "
                     f"{x.shape[-1]} classes")
  margins = jnp.asarray(ldam_margins(class_counts, max_margin), x.dtype)
  onehot = jax.nn.one_hot(y, x.shape[-1], dtype=x.dtype)
  log_p = jax.nn.log_softmax(scale * (x - onehot * margins[y][..., None]), axis=-1)
  return _checks.mean_per_example(-jnp.sum(onehot * log_p, axis=-1))
