"""Layers shared by every cnnjax model.

Every convolution and pooling goes through `cnnjax.models.fast_ops`, so a faster
formulation of those primitives changes one file and no model. Which formulation is an
``implementation`` field of those layers (``"auto"``, ``"lax"``, ``"hybrid"``,
``"native"``, ``"matmul"``), which every model passes down from its own field of that name. Layout is NHWC for
activations and HWIO (``[kh, kw, cin, cout]``) for convolution kernels.

Precision policy (the same in every layer): parameters are created in
``param_dtype`` (float32); inputs and parameters are cast to the compute ``dtype``
(e.g. bfloat16) right before the arithmetic; BatchNorm statistics are always
computed in float32. Models cast their logits back to float32.

Parameter-free steps (ReLU, pooling, flatten) are small modules rather than bare
functions so that they appear, with their names, in
``capture_intermediates`` output: `cnnjax.inspection` builds its layer table and
activation statistics from exactly that, without re-implementing any model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.models import fast_ops

Dtype = Any  # a jnp dtype or its name ("float32", "bfloat16")
Initializer = Callable[..., jax.Array]
Padding = str | int | Sequence[tuple[int, int]]

# Flax's defaults for nn.Conv / nn.Dense: LeCun normal (fan-in, truncated normal).
default_kernel_init = nn.initializers.lecun_normal()
# He et al. 2015 ("Delving deep into rectifiers"): fan-out normal, used by the
# ResNets (as in the flax ImageNet example and torchvision), whose depth makes
# the ReLU-aware variance matter.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def canonical_dtype(dtype: Dtype) -> jnp.dtype:
  """Returns ``jnp.dtype(dtype)``; accepts names so configs can hold strings."""
  try:
    return jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(
        f"Unknown dtype {dtype!r}; expected e.g. 'float32' or 'bfloat16'") from e


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
  return value


def _padding(padding: Padding) -> str | tuple[tuple[int, int], ...]:
  """Maps 'SAME'/'VALID' (any case), an int p, or ((t, b), (l, r)) to lax's form."""
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME', 'VALID', an int or pairs, got {padding!r}")
    return padding.upper()
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  pads = tuple((int(a), int(b)) for a, b in padding)
  if len(pads) != 2:
    raise ValueError(f"padding needs one (low, high) pair per spatial axis, got {padding!r}")
  return pads


def check_image_batch(x: jax.Array, model: str) -> None:
  """Raises ValueError unless ``x`` is a rank-4 NHWC batch."""
  if x.ndim != 4:
    raise ValueError(
        f"{model} expects images as [batch, height, width, channels], got shape {x.shape}")


def check_min_size(x: jax.Array, min_size: int, model: str, why: str) -> None:
  """Raises ValueError if the spatial size of ``x`` [N, H, W, C] is below ``min_size``.

  Models call this at the top of ``__call__`` (so at ``init``): an input that is
  too small would otherwise flow through as zero-sized arrays or fail deep inside
  XLA with a message that does not name the model.
  """
  check_image_batch(x, model)
  h, w = x.shape[1], x.shape[2]
  if h < min_size or w < min_size:
    raise ValueError(
        f"{model} needs inputs of at least {min_size}x{min_size} pixels ({why}); "
        f"got {h}x{w} (input shape {x.shape[1:]})")


def check_divisible_size(x: jax.Array, factor: int, model: str, why: str) -> None:
  """Raises ValueError unless H and W of ``x`` [N, H, W, C] are positive multiples of ``factor``."""
  check_image_batch(x, model)
  h, w = x.shape[1], x.shape[2]
  if h % factor or w % factor or not (h and w):
    raise ValueError(f"{model} needs height and width divisible by {factor} ({why}); got "
                     f"{h}x{w} (input shape {x.shape[1:]})")


class Conv(nn.Module):
  """2-D convolution (cross-correlation) through `fast_ops.conv2d`.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw) or an int.
    strides: (sh, sw) or an int.
    padding: 'SAME', 'VALID', an int p (p zeros on every side, PyTorch's
      ``padding=p``), or ((top, bottom), (left, right)).
    use_bias: whether to add a bias (off before BatchNorm, whose shift makes it
      redundant).
    dtype: compute dtype.
    param_dtype: parameter dtype (float32).
    kernel_init, bias_init: initializers; defaults match flax ``nn.Conv``.
    implementation: the `fast_ops` formulation (see `fast_ops.resolve`).

  Parameters: ``kernel`` [kh, kw, cin, cout] and ``bias`` [cout].

  Example:
    >>> import jax, jax.numpy as jnp
    >>> conv = Conv(4, (3, 3))
    >>> x = jnp.ones((2, 8, 8, 3))
    >>> variables = jax.eval_shape(lambda: conv.init(jax.random.key(0), x))
    >>> variables["params"]["kernel"].shape, jax.eval_shape(conv.apply, variables, x).shape
    ((3, 3, 3, 4), (2, 8, 8, 4))
  """
  features: int
  kernel_size: int | Sequence[int] = (3, 3)
  strides: int | Sequence[int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = nn.initializers.zeros_init()
  implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, *, relu_max_pool: tuple[Sequence[int], Padding] | None = None
               ) -> jax.Array:
    """Maps x [N, H, W, cin] to [N, H', W', features] in ``dtype``.

    ``relu_max_pool=(window, pool_padding)`` returns
    ``max_pool(relu(conv(x)), window, padding=pool_padding)`` (stride =
    window) as one fused op, `fast_ops.conv_relu_max_pool`; see
    `conv_relu_max_pool` below for the layer-level form.
    """
    check_image_batch(x, "Conv")
    kh, kw = _pair(self.kernel_size, "kernel_size")
    dtype = canonical_dtype(self.dtype)
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features),
                        canonical_dtype(self.param_dtype))
    bias = None
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,),
                        canonical_dtype(self.param_dtype)).astype(dtype)
    strides, padding = _pair(self.strides, "strides"), _padding(self.padding)
    if relu_max_pool is not None:
      window, pool_padding = relu_max_pool
      return fast_ops.conv_relu_max_pool(
          x.astype(dtype), kernel.astype(dtype),
          jnp.zeros((self.features,), dtype) if bias is None else bias, strides=strides,
          padding=padding, window=_pair(window, "window"), pool_padding=_padding(pool_padding),
          implementation=self.implementation)
    y = fast_ops.conv2d(x.astype(dtype), kernel.astype(dtype), strides=strides, padding=padding,
                        implementation=self.implementation)
    return y if bias is None else y + bias


def conv_relu_max_pool(x: jax.Array, conv: Conv, *, window: Sequence[int], pool_padding: Padding,
                       relu_name: str, pool_name: str, fused: bool) -> jax.Array:
  """``conv`` -> ReLU -> max-pool (stride = window), fused into one op when ``fused``.

  Call from a model's compact ``__call__``. The parameters are ``conv``'s
  either way, so a checkpoint does not depend on the choice. Models fuse in
  training (a faster backward pass on CPU, `fast_ops.conv_relu_max_pool`) and
  keep the three modules in evaluation, where inspection reads each layer's
  output under ``relu_name`` and ``pool_name``.
  """
  if fused:
    return conv(x, relu_max_pool=(window, pool_padding))
  x = ReLU(name=relu_name)(conv(x))
  return MaxPool(window, padding=pool_padding, implementation=conv.implementation,
                 name=pool_name)(x)


class Dense(nn.Module):
  """Fully connected layer on the last axis; parameters ``kernel`` [in, out], ``bias`` [out].

  Same initializers and precision policy as `Conv` (and as flax ``nn.Dense``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> dense = Dense(3)
    >>> variables = dense.init(jax.random.key(0), jnp.ones((2, 5)))
    >>> variables["params"]["kernel"].shape
    (5, 3)
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps x [..., in] to [..., features] in ``dtype``."""
    dtype = canonical_dtype(self.dtype)
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        canonical_dtype(self.param_dtype))
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,),
                        canonical_dtype(self.param_dtype))
      y = y + bias.astype(dtype)
    return y


class _Pool(nn.Module):
  """A pooling layer through `fast_ops` (window 2x2, stride = window by default)."""
  window: int | Sequence[int] = (2, 2)
  strides: int | Sequence[int] | None = None
  padding: str = "VALID"
  implementation: str = "auto"

  def _pool(self, x: jax.Array, op) -> jax.Array:
    window = _pair(self.window, "window")
    strides = window if self.strides is None else _pair(self.strides, "strides")
    return op(x, window, strides, _padding(self.padding), implementation=self.implementation)


class MaxPool(_Pool):
  """Max pooling through `fast_ops.max_pool` (window 2x2, stride = window by default)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps x [N, H, W, C] to [N, H', W', C]."""
    return self._pool(x, fast_ops.max_pool)


class AvgPool(_Pool):
  """Average pooling through `fast_ops.avg_pool` (padding excluded from the mean)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps x [N, H, W, C] to [N, H', W', C]."""
    return self._pool(x, fast_ops.avg_pool)


class GlobalAvgPool(nn.Module):
  """Mean over the spatial axes: [N, H, W, C] -> [N, C] (an H x W `fast_ops.avg_pool`)."""
  implementation: str = "auto"

  def __call__(self, x: jax.Array) -> jax.Array:
    window = (x.shape[1], x.shape[2])
    y = fast_ops.avg_pool(x, window, window, "VALID", implementation=self.implementation)
    return y.reshape(x.shape[0], x.shape[-1])


def _upsample_axis(x: jax.Array, axis: int) -> jax.Array:
  """Doubles ``axis`` by bilinear interpolation with pixel centres aligned (edges clamped).

  Output ``2i`` lies a quarter pixel before input ``i`` and ``2i + 1`` a quarter after,
  so they are ``0.75 x[i] + 0.25 x[i - 1]`` and ``0.75 x[i] + 0.25 x[i + 1]``.
  """
  n = x.shape[axis]
  before = jnp.concatenate([lax.slice_in_dim(x, 0, 1, axis=axis),
                            lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
  after = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis),
                           lax.slice_in_dim(x, n - 1, n, axis=axis)], axis=axis)
  even, odd = 0.75 * x + 0.25 * before, 0.75 * x + 0.25 * after
  stacked = jnp.stack([even, odd], axis=axis + 1)
  return stacked.reshape(*x.shape[:axis], 2 * n, *x.shape[axis + 1:])


class Upsample(nn.Module):
  """Doubles H and W of [N, H, W, C] (no parameters): ``"bilinear"`` or ``"nearest"``.

  ``"bilinear"`` equals ``jax.image.resize(x, (N, 2H, 2W, C), "bilinear")`` (pixel
  centres aligned, as PIL and OpenCV), written as two shifted 2-tap averages: on a
  2-core CPU its forward and backward pass run about 30x faster than the general
  resize, which builds interpolation matrices. The segmentation models upsample with
  it before a convolution (resize-convolution, which avoids the checkerboard patterns of
  strided transposed convolutions: Odena, Dumoulin & Olah, Distill 2016).
  """
  method: str = "bilinear"

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps x [N, H, W, C] to [N, 2H, 2W, C]."""
    if self.method == "nearest":
      n, h, w, c = x.shape
      return jnp.broadcast_to(x[:, :, None, :, None], (n, h, 2, w, 2, c)).reshape(
          n, 2 * h, 2 * w, c)
    if self.method != "bilinear":
      raise ValueError(f"Upsample method={self.method!r} is not one of ['bilinear', 'nearest']")
    return _upsample_axis(_upsample_axis(x, 1), 2)


class ReLU(nn.Module):
  """``max(x, 0)``, as a module so its output is visible to inspection."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.relu(x)


class Tanh(nn.Module):
  """``tanh(x)``, as a module so its output is visible to inspection."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.tanh(x)


class Flatten(nn.Module):
  """[N, ...] -> [N, prod(...)], row-major (H, then W, then C: Keras's NHWC order)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


class BatchNorm(nn.Module):
  """Batch normalization over all axes but the last, with optional ghost batches.

  Training (``use_running_average=False``) normalizes with the batch's mean and
  (biased) variance and updates the running averages in the 'batch_stats'
  collection: ``avg = momentum * avg + (1 - momentum) * batch_stat`` (Ioffe &
  Szegedy 2015; Flax's convention, PyTorch's momentum is ``1 - momentum``).
  Evaluation uses the running averages.

  Attributes:
    use_running_average: default for the call argument of the same name.
    axis_name: if set, batch statistics are averaged over this pmap/shard_map
      axis (cross-replica, "synchronized" BatchNorm).
    ghost_batches: G >= 1. The batch [N, ...] is split into G equal contiguous
      groups and each group is normalized with its own statistics, as if each
      ran on its own device (what per-device BatchNorm gives under pmap) inside
      a single sharded ``jit``, whose batch is split over devices in the same
      contiguous way. The running averages are updated with the mean over
      groups of the group statistics. N must be divisible by G.
    momentum: running-average decay (0.9).
    epsilon: added to the variance (1e-5).
    dtype: output dtype; statistics are computed in float32 regardless.
    param_dtype: dtype of ``scale``/``bias`` and of the running averages.
    implementation: the `fast_ops` formulation of the training-mode op (see
      `fast_ops.batch_norm_train`; ``"native"`` streams it on the CPU kernels).

  The call can also add a ``residual`` and apply ReLU (``relu=True``): one op,
  ``relu(BN(x) + residual)``, with the values of separate BatchNorm, add and ReLU
  layers; models use it through `batch_norm_relu`.

  Variables: params ``scale`` [C] (ones), ``bias`` [C] (zeros); batch_stats
  ``mean`` [C] (zeros), ``var`` [C] (ones) - the names flax ``nn.BatchNorm`` uses.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> bn = BatchNorm(use_running_average=False)
    >>> x = jnp.arange(8.0).reshape(4, 2)
    >>> variables = bn.init(jax.random.key(0), x)
    >>> y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    >>> [round(float(v), 3) for v in y.mean(axis=0)]
    [0.0, 0.0]
  """
  use_running_average: bool | None = None
  axis_name: str | None = None
  ghost_batches: int = 1
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scale_init: Initializer = nn.initializers.ones_init()
  bias_init: Initializer = nn.initializers.zeros_init()
  implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
               residual: jax.Array | None = None, relu: bool = False) -> jax.Array:
    """Normalizes x [N, ..., C], adds ``residual``, applies ReLU if ``relu``; same shape, ``dtype``."""
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    g = int(self.ghost_batches)
    if g < 1:
      raise ValueError(f"ghost_batches must be >= 1, got {self.ghost_batches}")
    features = x.shape[-1]
    pdtype = canonical_dtype(self.param_dtype)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), pdtype))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), pdtype))
    scale = self.param("scale", self.scale_init, (features,), pdtype)
    bias = self.param("bias", self.bias_init, (features,), pdtype)

    dtype = canonical_dtype(self.dtype)
    if use_running_average:
      x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      mean, var = ra_mean.value, ra_var.value
      y = ((x32 - mean) * (scale * lax.rsqrt(var + self.epsilon)) + bias).astype(dtype)
      if residual is not None:
        y = y + residual.astype(dtype)
      return jax.nn.relu(y) if relu else y

    y, mean, var = fast_ops.batch_norm_train(
        x, scale, bias, epsilon=self.epsilon, groups=g, axis_name=self.axis_name,
        residual=residual, relu=relu, dtype=dtype, implementation=self.implementation)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * mean.mean(0)
      ra_var.value = m * ra_var.value + (1 - m) * var.mean(0)
    return y


def batch_norm_relu(x: jax.Array, bn: BatchNorm, *, relu_name: str, fused: bool,
                    residual: jax.Array | None = None) -> jax.Array:
  """``ReLU(bn(x) [+ residual])``: one BatchNorm call when ``fused``, else three layers.

  Call it inside the parent's ``nn.compact`` method. Unfused, the ReLU is its own
  layer named ``relu_name``, so `cnnjax.inspection` sees its output; fused (models
  fuse in training without captured intermediates) the normalization, the add and the
  ReLU are one op, which streams them on the native kernels. The parameters and the
  values are the same either way.
  """
  if fused:
    return bn(x, residual=residual, relu=True)
  y = bn(x)
  if residual is not None:
    y = y + residual.astype(y.dtype)
  return ReLU(name=relu_name)(y)
