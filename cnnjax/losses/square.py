"""The square loss on a network's raw outputs: how classifiers are trained with MSE in
curvature studies (Hui & Belkin 2021; the edge-of-stability experiments of Cohen et al.
2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cnnjax.losses import _checks


def square_loss(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Half the squared Euclidean distance, ``0.5 * sum((o - t)^2)`` per example.

  Unlike `mean_squared_error` through `for_classification` (which squares the error of
  ``softmax(logits)``), the classification adapter feeds this loss the raw outputs and
  one-hot targets: the loss whose Hessian Cohen et al. (2021) track, with their scale
  (``SquaredLoss`` sums ``0.5 (f - y)^2`` over the classes).

  Args:
    outputs: ``[batch, ...]`` floating network outputs.
    targets: ``[batch, ...]`` targets, same shape (one-hot for a classifier).

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> square_loss(jnp.array([[1.0, 0.0, 2.0]]), jnp.array([[0.0, 1.0, 0.0]]))
    Array([3.], dtype=float32)

  References:
    Hui & Belkin, "Evaluation of neural architectures trained with square loss vs
    cross-entropy in classification tasks", ICLR 2021.
    Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient descent on neural networks typically
    occurs at the edge of stability", ICLR 2021.
  """
  o, t = _checks.floats(outputs, targets, "square_loss")
  error = (o - t).reshape(o.shape[0], -1)
  return 0.5 * jnp.sum(error * error, axis=-1)
