"""Hand-written CPU convolution and BatchNorm kernels, called from XLA through its FFI.

XLA:CPU runs a convolution with Eigen's spatial convolution (patch extraction +
matrix multiply). For the narrow layers of the CIFAR ResNets (3-64 channels on
32x32-8x8 maps) it runs at half the speed or less of a direct kernel: ``conv.cc``
computes them directly, with each block of output pixels kept in registers over the whole
reduction (measured side by side in ``docs/performance.md``). Two kernels, both
float32, NHWC activations, HWIO kernels, any strides, output channels a multiple of 16:

* `conv_forward(x, kernel, strides, padding)`: the zero-padded correlation (the
  forward pass, and the input gradient as the stride-1 correlation of the dilated,
  padded dy with the flipped kernel), without forming the padded input;
* `conv_kernel_grad(x, dy, kernel_hw, strides, padding)`: the kernel gradient.

``batch_norm.cc`` streams training-mode BatchNorm, which XLA:CPU runs as elementwise
and reduction fusions well below memory speed: `bn_stats` (batch mean and biased
variance in one read), `bn_apply` (``relu((x - mean) a + b + residual)``), and the two passes
of its gradient, `bn_grad_reduce` and `bn_grad_apply`. Channels a multiple of 16,
float32; `cnnjax.models.fast_ops.batch_norm_train` composes them.

`available()` says whether they can be used here: Linux x86-64 with AVX-512 and a
C++ compiler (the library is compiled on first use, `cnnjax.native.build`), and
``CNNJAX_NATIVE`` not set to ``0``. Nothing is compiled or registered on import.
`cnnjax.models.fast_ops` uses them under the ``"native"`` formulation.
"""

from __future__ import annotations

import ctypes
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.native import build

DISABLE_ENV = "CNNJAX_NATIVE"
FORWARD_TARGET = "cnnjax_conv_forward"
KERNEL_GRAD_TARGET = "cnnjax_conv_kernel_grad"
BN_TARGETS = ("cnnjax_bn_stats", "cnnjax_bn_apply", "cnnjax_bn_apply_residual",
              "cnnjax_bn_grad_reduce", "cnnjax_bn_grad_apply", "cnnjax_bn_grad_apply_residual")


@functools.cache
def _load() -> str | None:
  """Builds and registers the kernels once; returns why they are unavailable, or None."""
  if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
    return f"{DISABLE_ENV}=0"
  try:
    lib = ctypes.CDLL(str(build.library()))
  except (build.NativeUnavailable, OSError) as e:
    return str(e)
  for name in (FORWARD_TARGET, KERNEL_GRAD_TARGET, *BN_TARGETS):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
  return None


def unavailable_reason() -> str | None:
  """None when the kernels can be used, else why not (one line)."""
  return _load()


def available() -> bool:
  """Whether the native kernels are built and registered (building them if need be)."""
  return _load() is None


def _require() -> None:
  reason = _load()
  if reason is not None:
    raise RuntimeError(f"cnnjax.native kernels are unavailable: {reason}")


Pads = tuple[tuple[int, int], tuple[int, int]]
NO_PADDING: Pads = ((0, 0), (0, 0))


def _geometry(strides, padding) -> dict[str, np.int64]:
  (pt, pb), (pl, pr) = padding
  if min(pt, pb, pl, pr) < 0:
    raise ValueError(f"native convolution padding must be >= 0, got {padding}")
  values = dict(stride_h=strides[0], stride_w=strides[1], pad_top=pt, pad_bottom=pb,
                pad_left=pl, pad_right=pr)
  return {name: np.int64(v) for name, v in values.items()}


def conv_forward(x: jax.Array, kernel: jax.Array, strides: tuple[int, int] = (1, 1),
                 padding: Pads = NO_PADDING) -> jax.Array:
  """Correlation of x [N, H, W, Cin] with kernel [kh, kw, Cin, Cout], zero-padded.

  ``padding`` is ((top, bottom), (left, right)), all >= 0; the padded input is never
  formed. Cout must be a multiple of 16; both float32. Returns [N, Ho, Wo, Cout] with
  Ho = (H + top + bottom - kh) // sh + 1 (and Wo alike).
  """
  _require()
  n, h, w, _ = x.shape
  kh, kw, _, cout = kernel.shape
  (pt, pb), (pl, pr) = padding
  out = jax.ShapeDtypeStruct(
      (n, (h + pt + pb - kh) // strides[0] + 1, (w + pl + pr - kw) // strides[1] + 1, cout),
      jnp.float32)
  return jax.ffi.ffi_call(FORWARD_TARGET, out, vmap_method="sequential")(
      x, kernel, **_geometry(strides, padding))


def conv_kernel_grad(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                     strides: tuple[int, int] = (1, 1), padding: Pads = NO_PADDING
                     ) -> jax.Array:
  """Kernel gradient [kh, kw, Cin, Cout] of `conv_forward` (x, strides and padding as there).

  dy [N, Ho, Wo, Cout] must have `conv_forward`'s output shape.
  """
  _require()
  kh, kw = kernel_hw
  out = jax.ShapeDtypeStruct((kh, kw, x.shape[3], dy.shape[3]), jnp.float32)
  return jax.ffi.ffi_call(KERNEL_GRAD_TARGET, out, vmap_method="sequential")(
      x, dy, **_geometry(strides, padding))

def _channels(shape) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((shape[-1],), jnp.float32)


def bn_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean [C], biased variance [C]) of x [..., C] over every axis but the last."""
  _require()
  out = (_channels(x.shape), _channels(x.shape))
  return jax.ffi.ffi_call("cnnjax_bn_stats", out, vmap_method="sequential")(x)


def bn_apply(x: jax.Array, mean: jax.Array, a: jax.Array, b: jax.Array,
             residual: jax.Array | None = None, *, relu: bool) -> jax.Array:
  """``(x - mean) a + b (+ residual)``, then ReLU if ``relu``; mean, a, b [C], the rest like x."""
  _require()
  out = jax.ShapeDtypeStruct(x.shape, jnp.float32)
  if residual is None:
    return jax.ffi.ffi_call("cnnjax_bn_apply", out, vmap_method="sequential")(
        x, mean, a, b, relu=np.int64(relu))
  return jax.ffi.ffi_call("cnnjax_bn_apply_residual", out, vmap_method="sequential")(
      x, mean, a, b, residual, relu=np.int64(relu))


def bn_grad_reduce(x: jax.Array, y: jax.Array, dy: jax.Array, mean: jax.Array, *,
                   relu: bool) -> tuple[jax.Array, jax.Array]:
  """(sum dz, sum dz (x - mean)) over all axes but the last; dz = dy, masked by y > 0 if relu."""
  _require()
  out = (_channels(x.shape), _channels(x.shape))
  return jax.ffi.ffi_call("cnnjax_bn_grad_reduce", out, vmap_method="sequential")(
      x, y, dy, mean, relu=np.int64(relu))


def bn_grad_apply(x: jax.Array, y: jax.Array, dy: jax.Array, mean: jax.Array,
                  alpha: jax.Array, beta: jax.Array, gamma: jax.Array, *, relu: bool,
                  residual: bool = False):
  """``alpha dz + beta + gamma (x - mean)`` (and dz itself when ``residual``); dz as above."""
  _require()
  out = jax.ShapeDtypeStruct(x.shape, jnp.float32)
  if not residual:
    return jax.ffi.ffi_call("cnnjax_bn_grad_apply", out, vmap_method="sequential")(
        x, y, dy, mean, alpha, beta, gamma, relu=np.int64(relu))
  return jax.ffi.ffi_call("cnnjax_bn_grad_apply_residual", (out, out),
                          vmap_method="sequential")(
      x, y, dy, mean, alpha, beta, gamma, relu=np.int64(relu))
