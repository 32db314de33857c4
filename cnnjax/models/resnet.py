"""Residual networks for small images (He et al. 2016).

One module, `CifarResNet`, covers both registered ResNets:

* ``resnet20``: the paper's CIFAR-10 network (section 4.2): a 3x3 conv-16 stem,
  three stages of n = 3 basic blocks with 16, 32, 64 channels, global average
  pool, dense. Shortcuts are the paper's **option A** (identity; where the shape
  changes, subsample by 2 and zero-pad the new channels), which adds no
  parameters: 269,722 parameters in all on 32x32x3 (the paper's "0.27M").
* ``resnet18``: basic blocks [2, 2, 2, 2] with 64, 128, 256, 512 channels and
  the common CIFAR stem (one 3x3 conv, no 7x7 conv, no max pool), with
  **option B** shortcuts (1x1 conv + BatchNorm where the shape changes), as in
  the widely used CIFAR adaptation of ResNet-18: 11,173,962 parameters.

All 3x3 convs pad by 1 (PyTorch's and the paper's alignment; with stride 2 this
samples the same pixels as the option-A subsample ``x[:, ::2, ::2]``), have no
bias (BatchNorm follows) and use He (fan-out, normal) initialization, as the
paper does ("We initialize the weights as in [He et al. 2015]").

References:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
  He, Zhang, Ren, Sun, "Delving Deep into Rectifiers", ICCV 2015 (initialization).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers
from cnnjax.models.classic import (
    BatchNormClassifier, classifier_dropout, fuses_batch_norm, resolve_dropout)
from cnnjax.models.layers import Dtype

SHORTCUTS = ("A", "B")


class BasicBlock(nn.Module):
  """conv3x3(stride) BN ReLU conv3x3 BN, plus the shortcut, then ReLU."""
  features: int
  strides: int = 1
  shortcut: str = "A"
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_ghost_batches: int = 1
  implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps x [N, H, W, Cin] to [N, ceil(H/s), ceil(W/s), features]."""
    def conv(features, kernel, strides, padding, name):
      return layers.Conv(features, kernel, strides=strides, padding=padding, use_bias=False,
                         dtype=self.dtype, kernel_init=layers.he_normal_fan_out,
                         implementation=self.implementation, name=name)

    def bn(name):
      return layers.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name,
                              ghost_batches=self.bn_ghost_batches, dtype=self.dtype,
                              implementation=self.implementation, name=name)

    fused = fuses_batch_norm(self, train)
    y = conv(self.features, (3, 3), self.strides, 1, "conv1")(x)
    y = layers.batch_norm_relu(y, bn("bn1"), relu_name="relu1", fused=fused)
    y = conv(self.features, (3, 3), 1, 1, "conv2")(y)

    residual = x
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.shortcut == "A":
        if self.strides != 1:
          # A 1x1 window with stride s is the subsample x[:, ::s, ::s].
          residual = layers.MaxPool((1, 1), strides=self.strides,
                                    implementation=self.implementation,
                                    name="subsample")(residual)
        extra = self.features - x.shape[-1]
        if extra < 0:
          raise ValueError(
              f"Option-A shortcut cannot reduce channels ({x.shape[-1]} -> {self.features})")
        residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
      else:
        residual = conv(self.features, (1, 1), self.strides, "VALID", "proj_conv")(residual)
        residual = bn("proj_bn")(residual)
    return layers.batch_norm_relu(y, bn("bn2"), relu_name="relu2", fused=fused,
                                  residual=residual)


class CifarResNet(BatchNormClassifier):
  """ResNet with a 3x3 stem and no max pool, for 8x8 to 32x32 images.

  Attributes (besides `BatchNormClassifier`'s; dropout_rate None/0 = none, > 0 adds
  dropout before the Dense):
    stage_sizes: blocks per stage; stage i > 0 starts with a stride-2 block.
    widths: channels per stage (the stem has ``widths[0]``).
    shortcut: 'A' (parameter-free identity / subsample + zero-pad) or 'B'
      (1x1 conv + BatchNorm projection where the shape changes).

  Works on any H, W >= 1 (stride-2 convs with padding 1 round up).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = CifarResNet(num_classes=10, stage_sizes=(1, 1), widths=(4, 8))
    >>> x = jnp.zeros((2, 8, 8, 1))
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
    (2, 10)
  """
  stage_sizes: Sequence[int] = (3, 3, 3)
  widths: Sequence[int] = (16, 32, 64)
  shortcut: str = "A"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to logits [N, num_classes] (float32)."""
    layers.check_image_batch(x, "CifarResNet")
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f"Unknown shortcut {self.shortcut!r}; expected one of {SHORTCUTS}")
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(f"stage_sizes {tuple(self.stage_sizes)} and widths "
                       f"{tuple(self.widths)} must have the same length")
    rate = resolve_dropout(self.dropout_rate, 0.0, "CifarResNet")
    x = layers.Conv(self.widths[0], (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                    kernel_init=layers.he_normal_fan_out, implementation=self.implementation,
                    name="stem_conv")(x)
    stem_bn = layers.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name,
                               ghost_batches=self.bn_ghost_batches, dtype=self.dtype,
                               implementation=self.implementation, name="stem_bn")
    x = layers.batch_norm_relu(x, stem_bn, relu_name="stem_relu",
                               fused=fuses_batch_norm(self, train))
    for s, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(blocks):
        x = BasicBlock(width, strides=2 if s > 0 and b == 0 else 1, shortcut=self.shortcut,
                       dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                       bn_ghost_batches=self.bn_ghost_batches,
                       implementation=self.implementation,
                       name=f"stage{s + 1}_block{b + 1}")(x, train=train)
    x = layers.GlobalAvgPool(implementation=self.implementation, name="global_pool")(x)
    x = classifier_dropout(x, rate, train)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)
