"""Convolution, pooling and BatchNorm primitives used by every cnnjax layer.

All models call these functions, never `lax.conv_general_dilated` or
`nn.max_pool` directly, so a faster formulation can be swapped in at one place.
Layout is NHWC for activations and HWIO for kernels (Flax's convention).

Three formulations exist for the convolution:

* ``"lax"``: `lax.conv_general_dilated` / `lax.reduce_window`. On GPU and TPU
  these lower to cuDNN / the TPU convolution units and are the fast choice.
* ``"hybrid"`` (the CPU default without the native kernels): the forward pass is XLA's own convolution
  (im2col + matmul below ``IM2COL_FORWARD_MAX_CIN`` input channels); a
  hand-written gradient computes dx as a plain forward convolution of the
  dilated, padded dy with the flipped kernel, and the kernel gradient as a
  forward convolution of the transposed input with the transposed dy, both
  chunked over the batch (each with its own budget: `GRAD_CHUNK_BYTES`,
  `STRIDED_INPUT_GRAD_CHUNK_BYTES`, `KERNEL_GRAD_CHUNK_BYTES`). XLA's own CPU
  gradients of a convolution (lhs-dilated and batch-grouped convolutions) run
  2-10x slower, worst inside loops.
* ``"native"`` (the CPU default where `cnnjax.native.available()`): the hybrid
  formulation, except that a float32 convolution's forward pass, input gradient and
  kernel gradient each run on the hand-written AVX-512 kernels of `cnnjax.native`
  (called through XLA's FFI) when its channel counts are ones those kernels win at
  (`NATIVE_MAX_CHANNELS`, `NATIVE_KERNEL_GRAD_CHANNELS`; output channels a
  multiple of 16): the narrow layers of the CIFAR ResNets and the first VGG stage.
  The kernels pad as they read, so no padded copy of the input is made. Training-mode
  BatchNorm, with the residual add and ReLU that follow it, streams on the native
  kernels too (`batch_norm_train`).
* ``"matmul"``: im2col patches times the reshaped kernel (one matrix multiply
  per batch chunk, with a hand-written chunked gradient). An earlier CPU
  default, kept for comparison.

Pooling with a window equal to its stride is, outside ``"lax"``, a reduction
over a reshaped ``[N, Ho, a, Wo, b, C]`` view with a hand-written gradient
that sends each window's gradient to its first maximal entry in row-major
order, the rule of lax's select-and-scatter: values and gradients equal
``"lax"`` exactly, ties included. A 1x1 window without padding (the ResNets'
option-A shortcut) is the strided slice `subsample`. Other overlapping or strided
windows use `lax.reduce_window`.

`conv_relu_max_pool` runs a conv -> ReLU -> max-pool block as one op under
``"hybrid"`` and ``"native"`` (pooling before the ReLU, with which the max commutes).

Every op takes the formulation as an explicit ``implementation`` argument
(models carry it as a field, see `cnnjax.models.layers`); ``"auto"`` (the
default) resolves with `resolve`: ``"native"`` (or ``"hybrid"`` where the native
kernels cannot be built) when `jax.default_backend()` is ``"cpu"`` and ``"lax"``
otherwise. No module state decides it, so two models
with different formulations can live in one program.

The formulations are fastest with the process settings of
`cnnjax.cpu_runtime.configure` (an XLA flag that keeps convolutions on XLA's
Eigen kernels, and glibc malloc thresholds that stop every step from
page-faulting its temporaries in), which the entry points apply. The measured
effect of each piece is in ``docs/performance.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax import native


Padding = str | Sequence[tuple[int, int]]

IMPLEMENTATIONS = ("auto", "lax", "matmul", "hybrid", "native")

# Largest im2col patch block (bytes) handed to one matrix multiply. A batch
# is split into the fewest equal chunks whose patches fit: measured on a
# 2-core CPU, the chunked multiply ran 2-7x faster than one over the whole
# batch, whose patch matrix (80 MB for mnist_cnn's second convolution at
# batch 128) does not fit in cache.
PATCH_CHUNK_BYTES = 2**21

# Largest x + dy block (bytes) of one batch chunk of the "hybrid" kernel and
# input gradients. Kernel gradient, 2-core CPU, train step at batch 128 in 2
# micro-batches: keras_cifar_cnn 3,805 / 4,000 / 4,392 / 4,399 images/s with
# 2**19 / 2**21 / 2**23 / unchunked; mnist_cnn flat (+-5%). Input gradient in
# two chunks vs whole, mnist_cnn at batch 128: conv2 dx 23.2 -> 19.8 ms on one
# core; 1,821-1,843 -> 1,857-1,893 images/s on two (same process, alternating).
GRAD_CHUNK_BYTES = 2**23

# The kernel gradient's own x + dy block budget (bytes), smaller than the input
# gradient's. resnet20 at batch 128 (2-core CPU): its 16-channel 32x32 kernel
# gradient took 25.8 / 19.8 / 14.5 ms in 1 / 2 / 8 chunks; the whole train step,
# paired windows in one process: 2**20 vs 2**23: resnet20 x1.10, bn_cnn x1.04,
# vgg_small x1.01, keras_cifar_cnn x0.98, mnist_cnn x0.99 (the last three within
# the windows' spread).
KERNEL_GRAD_CHUNK_BYTES = 2**20

# The input gradient of a strided convolution convolves a dilated dy that is mostly
# zeros (3/4 for stride 2); its budget (bytes of dilated, padded dy + dx per
# example) is smaller: resnet20's 16 -> 32 stride-2 input gradient at batch 128
# took 21.0 ms whole, 12.1 ms in 8 chunks.
STRIDED_INPUT_GRAD_CHUNK_BYTES = 2**21

# Below this many input channels the "hybrid" forward pass is im2col + matmul:
# XLA's convolution is slow for Cin = 1 or 3 (keras_cifar_cnn: 3,545 vs 3,355
# images/s with it).
IM2COL_FORWARD_MAX_CIN = 8

# Up to this many input channels im2col stacks its taps on a leading axis
# ([taps, N, Ho, Wo]) instead of concatenating them along the channels.
# One core, train step, batch 128: mnist_cnn 1,000 -> 1,065 images/s,
# keras_cifar_cnn 2,630 -> 2,825 (docs/performance.md).
TAPS_LEADING_MAX_CIN = 3

def resolve(implementation: str = "auto", *, forward_only: bool = False,
            batch_sharded: bool = False) -> str:
  """The concrete formulation (``"lax"``, ``"hybrid"``, ``"native"`` or ``"matmul"``) now.

  ``"auto"`` on CPU (`jax.default_backend()` is ``"cpu"``) is ``"native"`` when
  `cnnjax.native.available()` (an AVX-512 x86-64 CPU and a C++ compiler; the kernels
  are built on first use) and ``"hybrid"`` otherwise; elsewhere it is ``"lax"``. With
  ``forward_only=True`` (code that takes no gradients, such as evaluation) ``"auto"``
  is ``"lax"`` everywhere: for a forward pass alone XLA's own ops were faster on CPU
  than the hybrid formulation (evaluation, batch 128, same run: keras_cifar_cnn 12,959
  vs 11,149 images/s, mnist_cnn 8,265 vs 5,921). With ``batch_sharded=True`` (a jit
  whose batch is split over several devices) ``"auto"`` is ``"hybrid"`` on CPU: the
  native kernels' FFI calls have no partitioning rule, and XLA would gather the whole
  batch onto every device for each of them. An explicit choice is returned unchanged.

  Examples:
    >>> resolve("lax")
    'lax'
    >>> resolve("auto", forward_only=True)
    'lax'
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} is not accepted; expected one of "
                     f"{list(IMPLEMENTATIONS)}")
  if implementation != "auto":
    return implementation
  if forward_only or jax.default_backend() != "cpu":
    return "lax"
  return "native" if not batch_sharded and native.available() else "hybrid"


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
  if cin <= TAPS_LEADING_MAX_CIN:
    # Tap order (i, j, c) matches kernel.reshape(kh * kw * cin, cout) (HWIO).
    # With the taps on the leading axis each is one contiguous strided copy; a
    # channel-minor concatenation of 1-3 wide slices is a slow scatter.
    taps = jnp.stack([lax.slice(xp, (0, i, j, c), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1,
                                                   c + 1), (1, sh, sw, 1))[..., 0]
                      for i in range(kh) for j in range(kw) for c in range(cin)])
    return jnp.einsum("tnhw,to->nhwo", taps, kernel.reshape(kh * kw * cin, cout))
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


def _kernel_grad_chunk(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...],
                       strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """dL/dkernel [kh, kw, Cin, Cout] of one batch chunk, as a forward convolution.

  dK[i, j, c, o] = sum_{n,h,w} xp[n, h*sh + i, w*sw + j, c] * g[n, h, w, o] is a
  VALID cross-correlation of xp laid out [Cin, Hp, Wp, N] (Cin as the batch, N
  as the features) with g laid out [Ho, Wo, N, Cout] as the kernel, dilated by
  the strides. XLA's CPU forward convolution runs this near matmul speed, while
  the kernel gradient XLA derives itself (batch-grouped) runs 2x slower.
  """
  kh, kw, _, _ = kernel_shape
  (pt, pb), (pl, pr) = pads
  sh, sw = strides
  ho, wo = g.shape[1], g.shape[2]
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  # Rows/columns past the last window are never read; crop them so the output is kh x kw.
  xp = xp[:, :kh + (ho - 1) * sh, :kw + (wo - 1) * sw]
  out = lax.conv_general_dilated(
      xp.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), window_strides=(1, 1),
      padding="VALID", rhs_dilation=(sh, sw), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return out.transpose(1, 2, 0, 3)


def _input_grad(g: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...],
                strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """dL/dx [N, H, W, Cin] as a forward convolution of dy with the flipped kernel.

  The transpose of a correlation with stride s and padding (lo, hi) is a
  correlation of dy dilated by s (s - 1 zeros between entries) and padded by
  (kh - 1 - lo, kh - 1 - hi + r), with the kernel flipped spatially and its
  in/out axes swapped; r = (H + lo + hi - kh) mod s are the input rows no
  window reached. Written as an explicit pad + plain forward convolution
  because XLA's own input gradient (an lhs-dilated convolution) runs 5-10x
  slower on CPU inside a loop (measured in docs/performance.md).
  """
  gp, kflip = _input_grad_operands(g, kernel, x_shape, strides, pads)
  return lax.conv_general_dilated(gp, kflip, (1, 1), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _input_grad_operands(g, kernel, x_shape, strides, pads):
  """(dy dilated by the strides and padded, flipped in/out-swapped kernel) of `_input_grad`."""
  kh, kw, _, _ = kernel.shape
  (pt, pb), (pl, pr) = pads
  sh, sw = strides
  rh = (x_shape[1] + pt + pb - kh) % sh
  rw = (x_shape[2] + pl + pr - kw) % sw
  zero = jnp.zeros((), g.dtype)
  gp = lax.pad(g, zero, ((0, 0, 0), (kh - 1 - pt, kh - 1 - pb + rh, sh - 1),
                         (kw - 1 - pl, kw - 1 - pr + rw, sw - 1), (0, 0, 0)))
  return gp, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


def _grad_chunks(batch: int, bytes_per_example: int, budget: int | None = None) -> int:
  """Fewest equal batch chunks whose per-example blocks fit ``budget`` (GRAD_CHUNK_BYTES)."""
  budget = GRAD_CHUNK_BYTES if budget is None else budget
  for m in range(1, batch + 1):
    if batch % m == 0 and (batch // m) * bytes_per_example <= budget:
      return m
  return batch


def _input_grad_chunks(x_shape, g_shape, kernel_shape, strides, itemsize: int) -> int:
  """Batch chunks of the input gradient: see STRIDED_INPUT_GRAD_CHUNK_BYTES."""
  per_x, per_g = math.prod(x_shape[1:]), math.prod(g_shape[1:])
  if strides == (1, 1):
    return _grad_chunks(x_shape[0], (per_x + per_g) * itemsize)
  kh, kw, _, _ = kernel_shape
  dilated = (x_shape[1] + kh) * (x_shape[2] + kw) * g_shape[-1]
  return _grad_chunks(x_shape[0], (dilated + per_x) * itemsize,
                      STRIDED_INPUT_GRAD_CHUNK_BYTES)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _hybrid_conv(x, kernel, strides, pads, im2col_forward):
  if im2col_forward:
    return _im2col_conv(x, kernel, strides, pads)
  return conv2d_lax(x, kernel, strides=strides, padding=pads)


def _hybrid_conv_fwd(x, kernel, strides, pads, im2col_forward):
  return _hybrid_conv(x, kernel, strides, pads, im2col_forward), (x, kernel)


def _hybrid_input_grad(g, kernel, x_shape, strides, pads):
  """dx of the hybrid formulation: `_input_grad` in batch chunks (see `_input_grad_chunks`)."""
  itemsize = jnp.result_type(g.dtype, kernel.dtype).itemsize
  chunks = _input_grad_chunks(x_shape, g.shape, kernel.shape, strides, itemsize)
  if chunks == 1:
    return _input_grad(g, kernel, x_shape, strides, pads)
  chunk_shape = (x_shape[0] // chunks, *x_shape[1:])
  dx = lax.map(lambda gc: _input_grad(gc, kernel, chunk_shape, strides, pads),
               g.reshape(chunks, -1, *g.shape[1:]))
  return dx.reshape(x_shape)


def _hybrid_kernel_grad(x, g, kernel_shape, strides, pads):
  """dkernel of the hybrid formulation: `_kernel_grad_chunk` summed over batch chunks."""
  itemsize = jnp.result_type(x.dtype, g.dtype).itemsize
  chunks = _grad_chunks(x.shape[0], (x[0].size + g[0].size) * itemsize, KERNEL_GRAD_CHUNK_BYTES)
  if chunks == 1:
    return _kernel_grad_chunk(x, g, kernel_shape, strides, pads)
  xs = x.reshape(chunks, -1, *x.shape[1:])
  gs = g.reshape(chunks, -1, *g.shape[1:])
  dkernel, _ = lax.scan(
      lambda acc, xg: (acc + _kernel_grad_chunk(xg[0], xg[1], kernel_shape, strides, pads), None),
      jnp.zeros(kernel_shape, jnp.result_type(x.dtype, g.dtype)), (xs, gs))
  return dkernel


def _hybrid_conv_bwd(strides, pads, im2col_forward, residuals, g):
  del im2col_forward
  x, kernel = residuals
  # jit drops dx where x needs no gradient (a model's first layer).
  dx = _hybrid_input_grad(g, kernel, x.shape, strides, pads)
  dkernel = _hybrid_kernel_grad(x, g, kernel.shape, strides, pads)
  return dx, dkernel.astype(kernel.dtype)


_hybrid_conv.defvjp(_hybrid_conv_fwd, _hybrid_conv_bwd)


def conv2d_hybrid(x: jax.Array, kernel: jax.Array, *, strides: Sequence[int] = (1, 1),
                  padding: Padding = "SAME") -> jax.Array:
  """`conv2d` with hand-written gradients that are plain forward convolutions.

  Same arguments and result as `conv2d_lax` (x [N, H, W, Cin], kernel
  [kh, kw, Cin, Cout] -> [N, Ho, Wo, Cout]); see the module docstring.

  Examples:
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> k = jnp.ones((2, 2, 1, 1))
    >>> jax.grad(lambda k: conv2d_hybrid(x, k, padding="VALID").sum())(k)[:, :, 0, 0]
    Array([[45., 54.],
           [81., 90.]], dtype=float32)
  """
  strides = tuple(int(s) for s in strides)
  kh, kw, cin, _ = kernel.shape
  pads = tuple(tuple(p) for p in _spatial_pads(x.shape[1:3], (kh, kw), strides, padding))
  return _hybrid_conv(x, kernel, strides, pads, cin < IM2COL_FORWARD_MAX_CIN)


# Where the native kernels (`cnnjax.native`) beat the hybrid formulation, per op, one
# core, batch 128, same process (docs/performance.md): forward 3->16 at 32x32 1.4-1.8 vs
# 9-13 ms, 16->16 7-8.5 vs 12-16, 32->32 at 16x16 6.2-7.3 vs 8.4-10, 64->64 within
# +-20 % either way, slower from 128 channels on (a block of 6 pixels x 64 output
# channels streams its whole kernel slice from L2); kernel gradient 16->16 7.4-9.0 vs
# 13-14 ms, 32->32 6.5 vs 10, 64->64 5.6 vs 8.3 (8x8) and 109 vs 131 (32x32), slower
# at 128 channels and for 3 input channels (4.7 vs 2.4).
NATIVE_MAX_CHANNELS = 64
NATIVE_KERNEL_GRAD_CHANNELS = (16, 64)


def _native_plan(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                 pads: Sequence[tuple[int, int]] = ((0, 0), (0, 0))) -> tuple[bool, bool, bool]:
  """Which of (forward, input gradient, kernel gradient) run on the native kernels."""
  kh, kw, cin, cout = kernel.shape
  (pt, pb), (pl, pr) = pads
  empty = x.shape[1] + pt + pb < kh or x.shape[2] + pl + pr < kw  # no window fits
  if (empty or min(pt, pb, pl, pr) < 0 or x.dtype != jnp.float32 or kernel.dtype != jnp.float32
      or not native.available()):
    return (False, False, False)
  narrow = cin <= NATIVE_MAX_CHANNELS and cout <= NATIVE_MAX_CHANNELS
  low, high = NATIVE_KERNEL_GRAD_CHANNELS
  return (narrow and cout % 16 == 0, narrow and cin % 16 == 0,
          low <= cin <= high and cout <= high and cout % 16 == 0)


def _native_input_grad(g: jax.Array, kernel: jax.Array, x_shape, strides, pads) -> jax.Array:
  """dx of a native convolution: the flipped-kernel correlation of (dilated, padded) dy."""
  kh, kw, _, _ = kernel.shape
  (pt, pb), (pl, pr) = pads
  dy_pads = ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr))
  if strides == (1, 1) and min(min(p) for p in dy_pads) >= 0:
    # A stride-1 dy needs no dilation: the kernel pads it as it reads.
    kflip = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    return native.conv_forward(g, kflip, (1, 1), dy_pads)
  return native.conv_forward(*_input_grad_operands(g, kernel, x_shape, strides, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _native_conv(x, kernel, strides, pads, plan):
  if plan[0]:
    return native.conv_forward(x, kernel, strides, pads)
  return _hybrid_conv(x, kernel, strides, pads, x.shape[-1] < IM2COL_FORWARD_MAX_CIN)


def _native_conv_fwd(x, kernel, strides, pads, plan):
  return _native_conv(x, kernel, strides, pads, plan), (x, kernel)


def _native_conv_bwd(strides, pads, plan, residuals, g):
  x, kernel = residuals
  _, native_dx, native_dkernel = plan
  if native_dx:
    dx = _native_input_grad(g, kernel, x.shape, strides, pads)
  else:
    dx = _hybrid_input_grad(g, kernel, x.shape, strides, pads)
  if native_dkernel:
    dkernel = native.conv_kernel_grad(x, g, kernel.shape[:2], strides, pads)
  else:
    dkernel = _hybrid_kernel_grad(x, g, kernel.shape, strides, pads)
  return dx, dkernel.astype(kernel.dtype)


_native_conv.defvjp(_native_conv_fwd, _native_conv_bwd)


def conv2d_native(x: jax.Array, kernel: jax.Array, *, strides: Sequence[int] = (1, 1),
                  padding: Padding = "SAME") -> jax.Array:
  """`conv2d` on the native CPU kernels where they are faster, else `conv2d_hybrid`.

  Same arguments and result as `conv2d_lax`. A float32 convolution runs its
  forward pass, input gradient and kernel gradient each on `cnnjax.native` when its
  channel counts are ones the kernels win at (`NATIVE_MAX_CHANNELS`,
  `NATIVE_KERNEL_GRAD_CHANNELS`, output channels a multiple of 16), and on the hybrid
  formulation otherwise; everything is hybrid where `cnnjax.native.available()` is
  False.

  Examples:
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> conv2d_native(x, jnp.ones((2, 2, 1, 1)), padding="VALID")[0, :, :, 0]
    Array([[10., 14., 18.],
           [26., 30., 34.],
           [42., 46., 50.]], dtype=float32)
  """
  strides = tuple(int(s) for s in strides)
  kh, kw, _, _ = kernel.shape
  pads = tuple(tuple(p) for p in _spatial_pads(x.shape[1:3], (kh, kw), strides, padding))
  plan = _native_plan(x, kernel, strides, pads)
  if not any(plan):
    return conv2d_hybrid(x, kernel, strides=strides, padding=padding)
  return _native_conv(x, kernel, strides, pads, plan)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: Sequence[int] = (1, 1),
    padding: Padding = "SAME",
    implementation: str = "auto",
) -> jax.Array:
  """Cross-correlation of ``x`` [N, H, W, Cin] with ``kernel`` [kh, kw, Cin, Cout].

  Args:
    x: activations, NHWC.
    kernel: HWIO weights.
    strides: (sh, sw).
    padding: ``"SAME"``, ``"VALID"`` or explicit ``[(top, bottom), (left, right)]``.
    implementation: one of `IMPLEMENTATIONS` (see `resolve`).

  Returns:
    [N, Ho, Wo, Cout] in the dtype of ``x`` and ``kernel``.

  Examples:
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> conv2d(x, jnp.ones((2, 2, 1, 1)), padding="VALID")[0, :, :, 0]
    Array([[10., 14., 18.],
           [26., 30., 34.],
           [42., 46., 50.]], dtype=float32)
  """
  impl = resolve(implementation)
  if impl == "lax":
    return conv2d_lax(x, kernel, strides=strides, padding=padding)
  if impl == "hybrid":
    return conv2d_hybrid(x, kernel, strides=strides, padding=padding)
  if impl == "native":
    return conv2d_native(x, kernel, strides=strides, padding=padding)
  return conv2d_matmul(x, kernel, strides=strides, padding=padding)


# ----------------------------------------------------------------------------- BatchNorm


def _batch_norm_lax(x, scale, bias, epsilon, groups, axis_name, residual, relu, dtype):
  """Training-mode BatchNorm as plain jnp ops (every case the native kernels do not take)."""
  n = x.shape[0]
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  # [G, N/G, ..., C]: statistics over every axis but the group and feature axes.
  xg = x32.reshape(groups, n // groups, *x.shape[1:])
  axes = tuple(range(1, xg.ndim - 1))
  mean = xg.mean(axis=axes, keepdims=True)
  if axis_name is not None:
    mean = lax.pmean(mean, axis_name)
  # Two-pass variance (no E[x^2] - E[x]^2 cancellation); under pmean the second pass
  # uses the global mean, so it is the exact global variance.
  var = jnp.square(xg - mean).mean(axis=axes, keepdims=True)
  if axis_name is not None:
    var = lax.pmean(var, axis_name)
  y = ((xg - mean) * (scale * lax.rsqrt(var + epsilon)) + bias).reshape(x.shape).astype(dtype)
  # The same ops, in the same dtype, as separate BatchNorm, add and ReLU layers.
  if residual is not None:
    y = y + residual.astype(dtype)
  if relu:
    y = jax.nn.relu(y)
  c = x.shape[-1]
  return y, mean.reshape(groups, c), var.reshape(groups, c)


def _native_bn_forward(x, scale, bias, residual, epsilon, relu):
  mean, var = native.bn_stats(x)
  inv = lax.rsqrt(var + epsilon)
  y = native.bn_apply(x, mean, scale * inv, bias, residual, relu=relu)
  return (y, mean, var), (x, y, mean, inv, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _native_bn(x, scale, bias, residual, epsilon, relu, has_residual):
  return _native_bn_forward(x, scale, bias, residual, epsilon, relu)[0]


def _native_bn_fwd(x, scale, bias, residual, epsilon, relu, has_residual):
  return _native_bn_forward(x, scale, bias, residual, epsilon, relu)


def _native_bn_bwd(epsilon, relu, has_residual, residuals, cotangents):
  x, y, mean, inv, scale = residuals
  gy, gmean, gvar = cotangents
  m = x.size // x.shape[-1]
  # With xc = x - mean and dz the gradient of the pre-activation, two sums over rows:
  sum_dz, sum_dz_xc = native.bn_grad_reduce(x, y, gy, mean, relu=relu)
  # dx = scale inv (dz - mean(dz) - xc inv^2 mean(dz xc)) (Ioffe & Szegedy 2015, sec. 3),
  # plus what the returned statistics pass back: d mean/dx = 1/m, d var/dx = 2 xc / m.
  alpha = scale * inv
  beta = (gmean - alpha * sum_dz) / m
  gamma = (2 * gvar - alpha * inv * inv * sum_dz_xc) / m
  out = native.bn_grad_apply(x, y, gy, mean, alpha, beta, gamma, relu=relu,
                             residual=has_residual)
  dx, dresidual = out if has_residual else (out, None)
  return dx, sum_dz_xc * inv, sum_dz, dresidual


_native_bn.defvjp(_native_bn_fwd, _native_bn_bwd)


def _native_bn_applies(x, scale, residual, groups, axis_name, dtype) -> bool:
  return (x.ndim >= 2 and x.shape[-1] % 16 == 0 and x.size > 0 and groups == 1
          and axis_name is None and x.dtype == jnp.float32 and scale.dtype == jnp.float32
          and jnp.dtype(dtype) == jnp.float32
          and (residual is None or residual.dtype == jnp.float32) and native.available())


def batch_norm_train(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    *,
    epsilon: float = 1e-5,
    groups: int = 1,
    axis_name: str | None = None,
    residual: jax.Array | None = None,
    relu: bool = False,
    dtype=jnp.float32,
    implementation: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode BatchNorm of x [N, ..., C], optionally followed by ``+ residual`` and ReLU.

  Normalizes with the batch mean and biased variance over every axis but the last,
  computed in float32 per group of ``groups`` equal contiguous batch slices (ghost
  batches) and averaged over ``axis_name`` when set; then ``y = (x - mean) scale /
  sqrt(var + epsilon) + bias``, cast to ``dtype``, plus ``residual`` and ReLU when
  asked. Under ``"native"`` a float32 input with channels a multiple of 16, one group
  and no ``axis_name`` runs on the streaming kernels of `cnnjax.native` (one read of x
  for the statistics, one pass to apply, two for the gradient, against XLA:CPU's
  slower fusions); everything else, and every other formulation, is plain jnp.

  Returns:
    (y like x in ``dtype``, mean [groups, C], var [groups, C]); mean and var are
    float32 and differentiable like y.

  Examples:
    >>> x = jnp.array([[1.0, -2.0], [3.0, 2.0]])
    >>> y, mean, var = batch_norm_train(x, jnp.ones(2), jnp.zeros(2), epsilon=0.0)
    >>> y
    Array([[-1., -1.],
           [ 1.,  1.]], dtype=float32)
    >>> mean, var
    (Array([[2., 0.]], dtype=float32), Array([[1., 4.]], dtype=float32))
  """
  if x.shape[0] % groups:
    raise ValueError(f"BatchNorm ghost_batches ({groups}) must divide the batch size "
                     f"({x.shape[0]})")
  if (resolve(implementation) == "native"
      and _native_bn_applies(x, scale, residual, groups, axis_name, dtype)):
    y, mean, var = _native_bn(x, scale, bias, residual, float(epsilon), bool(relu),
                              residual is not None)
    return y, mean[None], var[None]
  return _batch_norm_lax(x, scale, bias, epsilon, groups, axis_name, residual, relu,
                         jnp.dtype(dtype))


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
    *,
    implementation: str = "auto",
) -> jax.Array:
  """Max pooling over the spatial axes of ``x`` [N, H, W, C].

  Padding counts as -inf. A window equal to its stride (the usual 2x2/2) is
  computed as a max over a reshaped view outside the ``"lax"``
  implementation; other windows use `lax.reduce_window`. Ties: the gradient
  goes to the first maximum, as in lax (see the module docstring).

  Examples:
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> max_pool(x)[0, :, :, 0]
    Array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
  """
  window = tuple(int(w) for w in window)
  strides = window if strides is None else tuple(int(s) for s in strides)
  if resolve(implementation) == "lax":
    return max_pool_lax(x, window, strides, padding)
  if window == (1, 1) and _no_padding(x.shape[1:3], strides, padding):
    return subsample(x, strides)
  if not _is_tiling(window, strides):
    return max_pool_lax(x, window, strides, padding)
  pads = tuple(tuple(p) for p in _spatial_pads(x.shape[1:3], window, window, padding))
  return _tiled_max_pool(x, window, pads)


def _no_padding(shape: Sequence[int], strides: tuple[int, int], padding: Padding) -> bool:
  return all(p == (0, 0) for p in _spatial_pads(shape, (1, 1), strides, padding))


def subsample(x: jax.Array, strides: Sequence[int]) -> jax.Array:
  """``x[:, ::sh, ::sw]``: a max pool with a 1x1 window and no padding.

  Used for it outside ``"lax"``. Its gradient is a pad with interior zeros; the
  gradient of lax's strided `reduce_window` is a select-and-scatter that
  XLA:CPU lowers to a scatter with four full-size index arrays (resnet20's two
  option-A shortcuts: ~90 ms of thread time per batch-128 step, 2-core CPU).
  Values and gradients equal lax's exactly.

  Examples:
    >>> subsample(jnp.arange(9.0).reshape(1, 3, 3, 1), (2, 2))[0, :, :, 0]
    Array([[0., 2.],
           [6., 8.]], dtype=float32)
  """
  sh, sw = (int(s) for s in strides)
  return x[:, ::sh, ::sw]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _tiled_max_pool(x: jax.Array, window: tuple[int, int],
                    pads: tuple[tuple[int, int], ...]) -> jax.Array:
  blocks, _, _ = _blocks(x, window, pads, -jnp.inf)
  return jnp.max(blocks, axis=(2, 4))


def _tiled_max_pool_fwd(x, window, pads):
  y = _tiled_max_pool(x, window, pads)
  return y, (x, y)


def _tiled_max_pool_bwd(window, pads, residuals, g):
  x, y = residuals
  blocks, vjp_blocks = jax.vjp(lambda a: _blocks(a, window, pads, -jnp.inf)[0], x)
  (dx,) = vjp_blocks(_first_max_grad(blocks, y, g, window))
  return (dx,)


_tiled_max_pool.defvjp(_tiled_max_pool_fwd, _tiled_max_pool_bwd)


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
    *,
    implementation: str = "auto",
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
  if resolve(implementation) == "lax" or not _is_tiling(window, strides):
    return avg_pool_lax(x, window, strides, padding)
  blocks, _, _ = _blocks(x, window, padding, 0.0)
  ones, _, _ = _blocks(jnp.ones((1, *x.shape[1:3], 1), x.dtype), window, padding, 0.0)
  return jnp.sum(blocks, axis=(2, 4)) / jnp.sum(ones, axis=(2, 4))


# ----------------------------------------------------------------------------- conv, ReLU, max-pool

# Up to this many input channels the fused op's convolution is a direct sum
# of shifted products (`_direct_conv`). Same process, alternating windows:
# mnist_cnn (Cin = 1) 1,905-1,946 -> 1,999-2,014 images/s; keras_cifar_cnn
# (Cin = 3, channel-strided taps) 4,015-4,061 -> 3,799-3,802, so only Cin = 1.
FUSED_DIRECT_MAX_CIN = 1


def _direct_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                 pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """Cross-correlation as a sum of kh*kw*Cin shifted inputs times kernel rows.

  One elementwise expression with no patch matrix. XLA fuses it into each of
  its consumers (and recomputes it there), which pays off only inside the
  fused conv-ReLU-pool op, whose consumers are few; alone it lost 1.4x.
  """
  kh, kw, cin, _ = kernel.shape
  (pt, pb), (pl, pr) = pads
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  n, hp, wp, _ = xp.shape
  sh, sw = strides
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      for c in range(cin):
        tap = lax.slice(xp, (0, i, j, c), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c + 1),
                        (1, sh, sw, 1))
        term = tap * kernel[i, j, c]
        out = term if out is None else out + term
  return out


def _first_max_grad(blocks: jax.Array, y: jax.Array, g: jax.Array,
                    window: tuple[int, int]) -> jax.Array:
  """Gradient w.r.t. ``blocks`` [N, Ho, a, Wo, b, C] of their max ``y``, given dy ``g``.

  Each window's gradient goes to its first maximal entry in row-major order:
  the rule of lax's select-and-scatter (`ge` select), so values and gradients
  equal the "lax" formulation exactly. One elementwise pass instead of the
  equality mask, tie count and division that autodiff of `jnp.max` builds
  (measured 3x faster, docs/performance.md).
  """
  a, b = window
  taken = jnp.zeros(y.shape, bool)
  grads = []
  for i in range(a):
    row = []
    for j in range(b):
      hit = (blocks[:, :, i, :, j, :] == y) & ~taken
      taken = taken | hit
      row.append(jnp.where(hit, g, jnp.zeros((), g.dtype)))
    grads.append(jnp.stack(row, axis=3))
  return jnp.stack(grads, axis=2)


def _crp_forward(x, kernel, bias, strides, pads, window, pool_pads):
  """(pre-activation y, its blocks, their max) of conv -> max-pool; ReLU comes after.

  max(relu(.)) = relu(max(.)), so the pooling runs on y and the ReLU on the
  4x smaller pooled map: the full-size ReLU output is never formed.
  """
  if x.shape[-1] <= FUSED_DIRECT_MAX_CIN:
    y = _direct_conv(x, kernel, strides, pads) + bias
  else:
    y = conv2d_lax(x, kernel, strides=strides, padding=pads) + bias
  blocks, _, _ = _blocks(y, window, pool_pads, -jnp.inf)
  return y, blocks, jnp.max(blocks, axis=(2, 4))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _fused_crp(x, kernel, bias, strides, pads, window, pool_pads):
  return jax.nn.relu(_crp_forward(x, kernel, bias, strides, pads, window, pool_pads)[2])


def _fused_crp_fwd(x, kernel, bias, strides, pads, window, pool_pads):
  return _fused_crp(x, kernel, bias, strides, pads, window, pool_pads), (x, kernel, bias)


def _fused_crp_bwd(strides, pads, window, pool_pads, residuals, g):
  x, kernel, bias = residuals
  # XLA merges this recomputation with the forward pass's identical ops.
  y, blocks, pooled = _crp_forward(x, kernel, bias, strides, pads, window, pool_pads)
  # The separate ops send a window's gradient through the ReLU (0 unless its
  # max is > 0) to the first maximum of relu(y). Where the max is > 0 that is
  # the first maximum of y; elsewhere the gradient is 0 either way. So: mask
  # on the pooled map, route over y's blocks, and no full-size ReLU mask.
  gp = jnp.where(pooled > 0, g, jnp.zeros((), g.dtype))  # jax.nn.relu's gradient: 0 at 0
  _, vjp_blocks = jax.vjp(lambda a: _blocks(a, window, pool_pads, -jnp.inf)[0], y)
  (dy,) = vjp_blocks(_first_max_grad(blocks, pooled, gp, window))
  # Whole-batch gradients: chunking them as `_hybrid_conv_bwd` does was
  # slower here on 2 cores (mnist_cnn 1,844-1,850 vs 1,959-1,980 images/s,
  # same process), though faster on one core.
  dx = _input_grad(dy, kernel, x.shape, strides, pads)
  dkernel = _kernel_grad_chunk(x, dy, kernel.shape, strides, pads).astype(kernel.dtype)
  return dx, dkernel, jnp.sum(dy, axis=(0, 1, 2)).astype(bias.dtype)


_fused_crp.defvjp(_fused_crp_fwd, _fused_crp_bwd)


def conv_relu_max_pool(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    *,
    strides: Sequence[int] = (1, 1),
    padding: Padding = "SAME",
    window: Sequence[int] = (2, 2),
    pool_padding: Padding = "VALID",
    implementation: str = "auto",
) -> jax.Array:
  """``max_pool(relu(conv2d(x, kernel) + bias), window)`` with stride = window.

  Under ``"hybrid"`` and ``"native"`` this is one custom-gradient op that pools the
  pre-activation and applies the ReLU to the pooled map (max and ReLU
  commute), so the full-size ReLU output and its gradient mask are never
  formed; its convolution gradients are the "hybrid" ones. Same values and
  gradients as the three separate ops (ties in the pooling go to the first
  maximum, ReLU's gradient at 0 is 0, as in JAX).

  Examples:
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1) - 8
    >>> conv_relu_max_pool(x, jnp.ones((1, 1, 1, 1)), jnp.zeros(1))[0, :, :, 0]
    Array([[0., 0.],
           [5., 7.]], dtype=float32)
  """
  strides = tuple(int(s) for s in strides)
  window = tuple(int(w) for w in window)
  kh, kw, _, _ = kernel.shape
  impl = resolve(implementation)
  if impl not in ("hybrid", "native"):
    y = jax.nn.relu(conv2d(x, kernel, strides=strides, padding=padding, implementation=impl)
                    + bias)
    return max_pool(y, window, padding=pool_padding, implementation=impl)
  pads = tuple(tuple(p) for p in _spatial_pads(x.shape[1:3], (kh, kw), strides, padding))
  (pt, pb), (pl, pr) = pads
  ho = (x.shape[1] + pt + pb - kh) // strides[0] + 1
  wo = (x.shape[2] + pl + pr - kw) // strides[1] + 1
  pool_pads = tuple(tuple(p) for p in _spatial_pads((ho, wo), window, window, pool_padding))
  return _fused_crp(x, kernel, bias, strides, pads, window, pool_pads)
