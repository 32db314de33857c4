"""Losses designed for noisy labels: GCE, RCE, SCE, NCE, NCE+RCE, bootstrapping.

Every function takes logits ``[batch, ..., num_classes]`` and integer labels
``[batch, ...]`` (like `sparse_categorical_cross_entropy`) and returns ``[batch]``
(extra axes averaged). Probabilities are ``softmax(logits)``; logarithms are natural.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cnnjax.losses import _checks

# The clipping of Wang et al.'s (and Ma et al.'s) reverse cross-entropy code.
RCE_PROBABILITY_MIN = 1e-7
RCE_TARGET_MIN = 1e-4


def _log_probs_and_onehot(logits, labels, fn: str):
  x, y = _checks.int_labels(logits, labels, fn)
  return jax.nn.log_softmax(x, axis=-1), jax.nn.one_hot(y, x.shape[-1], dtype=x.dtype)


def _true_class(values: jax.Array, onehot: jax.Array) -> jax.Array:
  return jnp.sum(values * onehot, axis=-1)


def generalized_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                              q: float = 0.7) -> jax.Array:
  """Generalized cross-entropy ``(1 - p_y^q) / q`` (the L_q loss).

  ``q -> 0`` is cross-entropy, ``q = 1`` is ``1 - p_y`` (half the MAE of the one-hot
  target, which is noise-robust but slow to train). ``p_y^q`` is computed as
  ``exp(q log p_y)``, finite for any logits.

  Args:
    logits: ``[batch, ..., num_classes]``.
    labels: ``[batch, ...]`` integer labels.
    q: the exponent, in (0, 1].

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> generalized_cross_entropy(jnp.log(jnp.array([[0.25, 0.75]])), jnp.array([0]), q=0.5)
    Array([1.], dtype=float32)

  References:
    Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural
    Networks with Noisy Labels", NeurIPS 2018.
  """
  fn = "generalized_cross_entropy"
  if isinstance(q, (int, float)) and not 0.0 < q <= 1.0:
    raise ValueError(f"{fn}: q={q} must lie in (0, 1]")
  log_p, onehot = _log_probs_and_onehot(logits, labels, fn)
  p_q = jnp.exp(q * _true_class(log_p, onehot))
  return _checks.mean_per_example((1.0 - p_q) / q)


def reverse_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Reverse cross-entropy ``-sum_c p_c log t_c`` as the authors' code computes it.

  ``p = clip(softmax(logits), 1e-7, 1)`` and the one-hot target ``t`` clipped to
  ``[1e-4, 1]``, natural log: ``-ln(1e-4) * sum_{c != y} p_c = 9.21 * (1 - p_y)``
  (up to the clipping of ``p``). The paper writes ``A = log 1e-4 = -4`` (a base-10
  log); the code's value, followed here, is ``ln 1e-4 = -9.21``.

  Args:
    logits: ``[batch, ..., num_classes]``.
    labels: ``[batch, ...]`` integer labels.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> reverse_cross_entropy(jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([0]))
    Array([4.6051702], dtype=float32)

  References:
    Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy Labels",
    ICCV 2019 (code: github.com/YisenWang/symmetric_cross_entropy_for_noisy_labels).
  """
  log_p, onehot = _log_probs_and_onehot(logits, labels, "reverse_cross_entropy")
  p = jnp.clip(jnp.exp(log_p), RCE_PROBABILITY_MIN, 1.0)
  log_t = jnp.log(jnp.clip(onehot, RCE_TARGET_MIN, 1.0))
  return _checks.mean_per_example(-jnp.sum(p * log_t, axis=-1))


def symmetric_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                            alpha: float = 0.1, beta: float = 1.0) -> jax.Array:
  """Symmetric cross-entropy ``alpha CE + beta RCE`` (see `reverse_cross_entropy`).

  The defaults are the paper's CIFAR-10 setting; the CE term is unclipped, as in the
  authors' code.

  Args:
    logits: ``[batch, ..., num_classes]``.
    labels: ``[batch, ...]`` integer labels.
    alpha: weight of cross-entropy.
    beta: weight of reverse cross-entropy.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> symmetric_cross_entropy(jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([0]))
    Array([4.674485], dtype=float32)

  References:
    Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy Labels",
    ICCV 2019.
  """
  log_p, onehot = _log_probs_and_onehot(logits, labels, "symmetric_cross_entropy")
  ce = _checks.mean_per_example(-_true_class(log_p, onehot))
  return alpha * ce + beta * reverse_cross_entropy(logits, labels)


def normalized_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Normalized cross-entropy ``-log p_y / (-sum_c log p_c)``, in (0, 1].

  The denominator is at least ``C log C`` (when every ``p_c = 1/C``), so the ratio is
  finite for any logits.

  Args:
    logits: ``[batch, ..., num_classes]``.
    labels: ``[batch, ...]`` integer labels.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> normalized_cross_entropy(jnp.zeros((1, 4)), jnp.array([2]))
    Array([0.25], dtype=float32)

  References:
    Ma et al., "Normalized Loss Functions for Deep Learning with Noisy Labels",
    ICML 2020.
  """
  log_p, onehot = _log_probs_and_onehot(logits, labels, "normalized_cross_entropy")
  return _checks.mean_per_example(_true_class(log_p, onehot) / jnp.sum(log_p, axis=-1))


def nce_rce(logits: jax.Array, labels: jax.Array, *,
            alpha: float = 1.0, beta: float = 1.0) -> jax.Array:
  """The active-passive loss ``alpha NCE + beta RCE`` of Ma et al. 2020.

  Args:
    logits: ``[batch, ..., num_classes]``.
    labels: ``[batch, ...]`` integer labels.
    alpha: weight of `normalized_cross_entropy`.
    beta: weight of `reverse_cross_entropy`.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> nce_rce(jnp.zeros((1, 4)), jnp.array([2]))
    Array([7.1577554], dtype=float32)

  References:
    Ma et al., "Normalized Loss Functions for Deep Learning with Noisy Labels",
    ICML 2020 (code: github.com/HanxunH/Active-Passive-Losses).
  """
  return (alpha * normalized_cross_entropy(logits, labels)
          + beta * reverse_cross_entropy(logits, labels))


def bootstrapped_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                               mode: str = "soft", beta: float | None = None) -> jax.Array:
  """Bootstrapped cross-entropy ``-sum_c (beta t_c + (1 - beta) s_c) log p_c``.

  ``mode="soft"`` (default ``beta=0.95``): ``s = p``, the model's own probabilities;
  ``mode="hard"`` (default ``beta=0.8``): ``s = onehot(argmax p)``. The target ``s`` is
  treated as a constant (gradient stopped), the usual reading of Reed et al.

  Args:
    logits: ``[batch, ..., num_classes]``.
    labels: ``[batch, ...]`` integer labels.
    mode: ``"soft"`` or ``"hard"``.
    beta: weight of the given label in [0, 1]; None = the mode's default.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits = jnp.log(jnp.array([[0.25, 0.75]]))
    >>> bootstrapped_cross_entropy(logits, jnp.array([0]), mode="hard", beta=0.5)
    Array([0.8369882], dtype=float32)

  References:
    Reed et al., "Training Deep Neural Networks on Noisy Labels with Bootstrapping",
    ICLR 2015 workshop.
  """
  fn = "bootstrapped_cross_entropy"
  if mode not in ("soft", "hard"):
    raise ValueError(f"{fn}: mode={mode!r} is not accepted; expected one of ['hard', 'soft']")
  beta = {"soft": 0.95, "hard": 0.8}[mode] if beta is None else beta
  _checks.check_fraction(beta, "beta", fn)
  log_p, onehot = _log_probs_and_onehot(logits, labels, fn)
  if mode == "soft":
    own = jnp.exp(log_p)
  else:
    own = jax.nn.one_hot(jnp.argmax(log_p, axis=-1), log_p.shape[-1], dtype=log_p.dtype)
  target = beta * onehot + (1.0 - beta) * jax.lax.stop_gradient(own)
  return _checks.mean_per_example(-jnp.sum(target * log_p, axis=-1))
