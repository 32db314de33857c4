"""Convolution and pooling primitives used by every cnnjax layer.

All models call these functions, never `lax.conv_general_dilated` or
`nn.max_pool` directly, so a faster formulation can be swapped in at one place.
Layout is NHWC for activations and HWIO for kernels (Flax's convention).

Two formulations exist for each op:

* ``"lax"``: `lax.conv_general_dilated` / `lax.reduce_window`. On GPU and TPU
  these lower to cuDNN / the TPU convolution units and are the fast choice.
* ``"matmul"``: convolution as im2col patches times the reshaped kernel (one
  matrix multiply per batch chunk, with a hand-written chunked gradient) and
  pooling with a non-overlapping window as a reduction over a reshaped view.
  On CPU this is several times faster for training: XLA's CPU convolution
  gradients and the select-and-scatter gradient of `reduce_window` max are
  slow, while its matrix multiply is close to the machine's peak when the
  operands fit in cache. The measured effect of each piece is in
  ``docs/performance.md``.

``"auto"`` (the default) picks ``"matmul"`` when `jax.default_backend()` is
``"cpu"`` and ``"lax"`` otherwise. The choice is read when a function is
traced: set it with `set_implementation` (or the ``CNNJAX_FAST_OPS``
environment variable) before the step is compiled; a function that was
already compiled keeps the formulation it was traced with.

Both formulations give the same values and gradients up to float rounding,
with one documented exception: where several inputs of a max-pooling window
tie for the maximum, ``"lax"`` sends the whole gradient to the first of them
and ``"matmul"`` splits it equally between them (the rule of `jnp.max`). The
sum of the gradient over the window is the same. After a ReLU, ties are
windows of zeros whose upstream gradient is zero anyway, so training
trajectories agree.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Padding = str | Sequence[tuple[int, int]]

IMPLEMENTATIONS = ("auto", "lax", "matmul")

# Largest im2col patch block (bytes) handed to one matrix multiply. A batch
# is split into the fewest equal chunks whose patches fit: measured on a
# 2-core CPU, the chunked multiply ran 2-7x faster than one over the whole
# batch, whose patch matrix (80 MB for mnist_cnn's second convolution at
# batch 128) does not fit in cache.
PATCH_CHUNK_BYTES = 2**21

_implementation = os.environ.get("CNNJAX_FAST_OPS", "auto")


def set_implementation(name: str) -> None:
  """Selects the formulation used by functions traced from now on.

  Args:
    name: ``"auto"`` (``"matmul"`` on CPU, ``"lax"`` elsewhere), ``"lax"`` or
      ``"matmul"``.

  Examples:
    >>> set_implementation("lax")
    >>> current_implementation()
    'lax'
    >>> set_implementation("auto")
  """
  global _implementation
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"Unknown fast_ops implementation {name!r}; expected one of {IMPLEMENTATIONS}")
  _implementation = name


@contextlib.contextmanager
def implementation(name: str) -> Iterator[None]:
  """Context manager form of `set_implementation`; restores the previous choice."""
  previous = _implementation
  set_implementation(name)
  try:
    yield
  finally:
    set_implementation(previous)


def current_implementation() -> str:
  """The resolved formulation, ``"lax"`` or ``"matmul"``, for a trace now."""
  if _implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"CNNJAX_FAST_OPS={_implementation!r} is not one of {IMPLEMENTATIONS}")
  if _implementation == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "lax"
  return _implementation


def _spatial_pads(shape: Sequence[int], window: Sequence[int], strides: Sequence[int],
                  padding: Padding) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME', 'VALID' or [(lo, hi), (lo, hi)]; got {padding!r}")
    return [tuple(p) for p in lax.padtype_to_pads(tuple(shape), tuple(window), tuple(strides),
                                                    padding.upper())]
  pads = [tuple(int(v) for v in p) for p in padding]
  if len(pads) != 2 or any(len(p) != 2 for p in pads):
    raise ValueError(f"explicit padding must be two (lo, hi) pairs; got {padding!r}")
  return pads


# ----------------------------------------------------------------------------- convolution


def conv2d_lax(x: jax.Array, kernel: jax.Array, *, strides: Sequence[int] = (1, 1),
               padding: Padding = "SAME") -> jax.Array:
  """`conv2d` through `lax.conv_general_dilated` (the reference formulation)."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=tuple(strides), padding=padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _im2col_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                 pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """Cross-correlation as patches [N, Ho, Wo, kh*kw*Cin] @ kernel [kh*kw*Cin, Cout]."""
  kh, kw, cin, cout = kernel.shape
  (pt, pb), (pl, pr) = pads
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  n, hp, wp, _ = xp.shape
  sh, sw = strides
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  # Tap order (i, j, c) matches kernel.reshape(kh * kw * cin, cout) (HWIO).
  taps = [lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, cin),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  return jnp.einsum("nhwk,ko->nhwo", patches, kernel.reshape(kh * kw * cin, cout))


def _num_chunks(batch: int, bytes_per_example: int) -> int:
  """Fewest equal chunks of ``batch`` whose patch block fits PATCH_CHUNK_BYTES."""
  for m in range(1, batch + 1):
    if batch % m == 0 and (batch // m) * bytes_per_example <= PATCH_CHUNK_BYTES:
      return m
  return batch


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _chunked_conv(x, kernel, strides, pads, chunks):
  xs = x.reshape(chunks, -1, *x.shape[1:])
  y = lax.map(lambda xc: _im2col_conv(xc, kernel, strides, pads), xs)
  return y.reshape(-1, *y.shape[2:])


def _chunked_conv_fwd(x, kernel, strides, pads, chunks):
  # Residuals are the inputs, not the patches: the backward pass rebuilds
  # each chunk's patches while they are in cache, which is cheaper than
  # storing and re-reading the whole batch's patch matrix.
  return _chunked_conv(x, kernel, strides, pads, chunks), (x, kernel)


def _chunked_conv_bwd(strides, pads, chunks, residuals, g):
  x, kernel = residuals
  xs = x.reshape(chunks, -1, *x.shape[1:])
  gs = g.reshape(chunks, -1, *g.shape[1:])

  def body(dkernel, xg):
    xc, gc = xg
    _, vjp = jax.vjp(lambda a, k: _im2col_conv(a, k, strides, pads), xc, kernel)
    dxc, dkc = vjp(gc)
    return dkernel + dkc, dxc

  dkernel, dx = lax.scan(body, jnp.zeros_like(kernel), (xs, gs))
  return dx.reshape(x.shape), dkernel


_chunked_conv.defvjp(_chunked_conv_fwd, _chunked_conv_bwd)


def conv2d_matmul(x: jax.Array, kernel: jax.Array, *, strides: Sequence[int] = (1, 1),
                  padding: Padding = "SAME") -> jax.Array:
  """`conv2d` as im2col patches times the kernel, chunked over the batch.

  Same arguments and result as `conv2d_lax`; see the module docstring.
  """
  strides = tuple(int(s) for s in strides)
  kh, kw, cin, _ = kernel.shape
  pads = tuple(_spatial_pads(x.shape[1:3], (kh, kw), strides, padding))
  (pt, pb), (pl, pr) = pads
  ho = (x.shape[1] + pt + pb - kh) // strides[0] + 1
  wo = (x.shape[2] + pl + pr - kw) // strides[1] + 1
  itemsize = jnp.result_type(x.dtype, kernel.dtype).itemsize
  chunks = _num_chunks(x.shape[0], ho * wo * kh * kw * cin * itemsize)
  if chunks == 1:
    return _im2col_conv(x, kernel, strides, pads)
  return _chunked_conv(x, kernel, strides, pads, chunks)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: Sequence[int] = (1, 1),
    padding: Padding = "SAME",
) -> jax.Array:
  """Cross-correlation of ``x`` [N, H, W, Cin] with ``kernel`` [kh, kw, Cin, Cout].

  Args:
    x: activations, NHWC.
    kernel: HWIO weights.
    strides: (sh, sw).
    padding: ``"SAME"``, ``"VALID"`` or explicit ``[(top, bottom), (left, right)]``.

  Returns:
    [N, Ho, Wo, Cout] in the dtype of ``x`` and ``kernel``.

  Examples:
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> conv2d(x, jnp.ones((2, 2, 1, 1)), padding="VALID")[0, :, :, 0]
    Array([[10., 14., 18.],
           [26., 30., 34.],
           [42., 46., 50.]], dtype=float32)
  """
  if current_implementation() == "lax":
    return conv2d_lax(x, kernel, strides=strides, padding=padding)
  return conv2d_matmul(x, kernel, strides=strides, padding=padding)


# ----------------------------------------------------------------------------- pooling


def _blocks(x: jax.Array, window: tuple[int, int], padding: Padding,
            fill: float) -> tuple[jax.Array, int, int]:
  """x padded with ``fill`` and cropped, reshaped to [N, Ho, a, Wo, b, C] blocks."""
  a, b = window
  pads = _spatial_pads(x.shape[1:3], window, window, padding)
  (pt, pb), (pl, pr) = pads
  x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=jnp.asarray(fill, x.dtype))
  ho, wo = x.shape[1] // a, x.shape[2] // b
  x = x[:, :ho * a, :wo * b]
  return x.reshape(x.shape[0], ho, a, wo, b, x.shape[3]), ho, wo


def _is_tiling(window: tuple[int, int], strides: tuple[int, int]) -> bool:
  return window == strides


def _window_padding(padding: Padding) -> str | tuple[tuple[int, int], ...]:
  """`reduce_window` wants a (lo, hi) pair for every axis, batch and channels included."""
  if isinstance(padding, str):
    return padding.upper()
  return ((0, 0), *(tuple(p) for p in padding), (0, 0))


def max_pool_lax(x: jax.Array, window: Sequence[int] = (2, 2), strides: Sequence[int] | None = None,
                 padding: Padding = "VALID") -> jax.Array:
  """`max_pool` through `lax.reduce_window` (the reference formulation)."""
  strides = tuple(window) if strides is None else tuple(strides)
  # The init value must be a Python scalar: only then does lax use its
  # differentiable max-pool primitive.
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                           _window_padding(padding))


def max_pool(
    x: jax.Array,
    window: Sequence[int] = (2, 2),
    strides: Sequence[int] | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
  """Max pooling over the spatial axes of ``x`` [N, H, W, C].

  Padding counts as -inf. A window equal to its stride (the usual 2x2/2) is
  computed as a max over a reshaped view under the ``"matmul"``
  implementation; other windows use `lax.reduce_window`. Ties: see the
  module docstring.

  Examples:
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> max_pool(x)[0, :, :, 0]
    Array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
  """
  window = tuple(int(w) for w in window)
  strides = window if strides is None else tuple(int(s) for s in strides)
  if current_implementation() == "lax" or not _is_tiling(window, strides):
    return max_pool_lax(x, window, strides, padding)
  blocks, _, _ = _blocks(x, window, padding, -jnp.inf)
  return jnp.max(blocks, axis=(2, 4))


def avg_pool_lax(x: jax.Array, window: Sequence[int] = (2, 2), strides: Sequence[int] | None = None,
                 padding: Padding = "VALID") -> jax.Array:
  """`avg_pool` through `lax.reduce_window` (the reference formulation)."""
  strides = tuple(window) if strides is None else tuple(strides)
  dims, st, padding = (1, *window, 1), (1, *strides, 1), _window_padding(padding)
  total = lax.reduce_window(x, 0.0, lax.add, dims, st, padding)
  count = lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, lax.add, dims, st,
                            padding)
  return total / count


def avg_pool(
    x: jax.Array,
    window: Sequence[int] = (2, 2),
    strides: Sequence[int] | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
  """Average pooling (padding excluded from the count) over ``x`` [N, H, W, C].

  Examples:
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> avg_pool(x)[0, :, :, 0]
    Array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
  """
  window = tuple(int(w) for w in window)
  strides = window if strides is None else tuple(int(s) for s in strides)
  if current_implementation() == "lax" or not _is_tiling(window, strides):
    return avg_pool_lax(x, window, strides, padding)
  blocks, _, _ = _blocks(x, window, padding, 0.0)
  ones, _, _ = _blocks(jnp.ones((1, *x.shape[1:3], 1), x.dtype), window, padding, 0.0)
  return jnp.sum(blocks, axis=(2, 4)) / jnp.sum(ones, axis=(2, 4))
