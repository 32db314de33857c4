"""Convolution and pooling primitives used by every cnnjax layer.

All models call these functions, never `lax.conv_general_dilated` or
`nn.max_pool` directly, so a faster formulation can be swapped in at one place.
Layout is NHWC for activations and HWIO for kernels (Flax's convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: Sequence[int] = (1, 1),
    padding: str | Sequence[tuple[int, int]] = "SAME",
) -> jax.Array:
  """Cross-correlation of ``x`` [N, H, W, Cin] with ``kernel`` [kh, kw, Cin, Cout]."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=tuple(strides), padding=padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def max_pool(
    x: jax.Array,
    window: Sequence[int] = (2, 2),
    strides: Sequence[int] | None = None,
    padding: str = "VALID",
) -> jax.Array:
  """Max pooling over the spatial axes of ``x`` [N, H, W, C]."""
  strides = tuple(window) if strides is None else tuple(strides)
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), padding)


def avg_pool(
    x: jax.Array,
    window: Sequence[int] = (2, 2),
    strides: Sequence[int] | None = None,
    padding: str = "VALID",
) -> jax.Array:
  """Average pooling (padding excluded from the count) over ``x`` [N, H, W, C]."""
  strides = tuple(window) if strides is None else tuple(strides)
  dims, st = (1, *window, 1), (1, *strides, 1)
  total = lax.reduce_window(x, 0.0, lax.add, dims, st, padding)
  count = lax.reduce_window(jnp.ones_like(x[:1, ..., :1]), 0.0, lax.add, dims, st, padding)
  return total / count
