"""Hand-written CPU convolution kernels, called from XLA through its FFI.

XLA:CPU runs a convolution with Eigen's spatial convolution (patch extraction +
matrix multiply). For the narrow layers of the CIFAR ResNets (3-64 channels on
32x32-8x8 maps) it runs at half the speed or less of a direct kernel: ``conv.cc``
computes them directly, with each block of output pixels kept in registers over the whole
reduction (measured side by side in ``docs/performance.md``). Two kernels, both
float32, NHWC activations, HWIO kernels, any strides, output channels a multiple of 16:

* `conv_forward(xp, kernel, strides)`: the VALID correlation of an already padded
  input (the forward pass, and the input gradient as the stride-1 correlation of the
  dilated, padded dy with the flipped kernel);
* `conv_kernel_grad(xp, dy, kernel_hw, strides)`: the kernel gradient.

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


@functools.cache
def _load() -> str | None:
  """Builds and registers the kernels once; returns why they are unavailable, or None."""
  if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
    return f"{DISABLE_ENV}=0"
  try:
    lib = ctypes.CDLL(str(build.library()))
  except (build.NativeUnavailable, OSError) as e:
    return str(e)
  for name in (FORWARD_TARGET, KERNEL_GRAD_TARGET):
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


def conv_forward(xp: jax.Array, kernel: jax.Array, strides: tuple[int, int] = (1, 1)
                 ) -> jax.Array:
  """VALID correlation of xp [N, Hp, Wp, Cin] with kernel [kh, kw, Cin, Cout].

  Cout must be a multiple of 16; both float32. Returns [N, Ho, Wo, Cout] with
  Ho = (Hp - kh) // sh + 1 (and Wo alike).
  """
  _require()
  n, hp, wp, _ = xp.shape
  kh, kw, _, cout = kernel.shape
  sh, sw = strides
  out = jax.ShapeDtypeStruct((n, (hp - kh) // sh + 1, (wp - kw) // sw + 1, cout), jnp.float32)
  return jax.ffi.ffi_call(FORWARD_TARGET, out, vmap_method="sequential")(
      xp, kernel, stride_h=np.int64(sh), stride_w=np.int64(sw))


def conv_kernel_grad(xp: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                     strides: tuple[int, int] = (1, 1)) -> jax.Array:
  """Kernel gradient [kh, kw, Cin, Cout] of `conv_forward`.

  xp is the padded input cropped to the rows and columns the windows read
  (Hp = (Ho - 1) * sh + kh), dy [N, Ho, Wo, Cout].
  """
  _require()
  kh, kw = kernel_hw
  sh, sw = strides
  out = jax.ShapeDtypeStruct((kh, kw, xp.shape[3], dy.shape[3]), jnp.float32)
  return jax.ffi.ffi_call(KERNEL_GRAD_TARGET, out, vmap_method="sequential")(
      xp, dy, stride_h=np.int64(sh), stride_w=np.int64(sw))
