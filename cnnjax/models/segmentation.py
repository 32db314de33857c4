"""Segmentation networks: per-pixel logits ``[N, H, W, num_classes]``.

Unlike every other cnnjax model these return one logit vector **per pixel** (their
``output_kind`` is ``"per_pixel"``), at the input's resolution; ``num_classes`` counts
the classes of a pixel (for `cnnjax.tasks.Segmentation`: the dataset's classes plus
background). Both downsample with 2x2 max pools and upsample 2x with `layers.Upsample`,
so the input's height and width must be divisible by 2 per pool; every convolution and
pooling goes through `fast_ops` with the model's ``implementation``.

* `UNet` (``unet_small``): Ronneberger et al.'s encoder-decoder with skip connections,
  small: levels of two conv-BN-ReLU units (16, 32, 64 channels by default), a 2x2 max
  pool between levels; the decoder upsamples 2x (nearest neighbour), concatenates the
  encoder's map of the same level and applies two conv-BN-ReLU units; a 1x1 conv gives
  the logits. The paper's 2x2 up-convolution is replaced by this parameter-free
  upsampling followed by the 3x3 convolutions (resize-convolution).
* `FCN` (``fcn``): Long et al.'s fully convolutional network with its skip architecture:
  a conv-BN-ReLU backbone of pooled stages, a 1x1 "score" conv on each stage's output
  (strides 1, 2, 4 with the default 3 stages) and after the last pool (stride 8), and
  each coarser score map upsampled 2x and added to the next finer one (FCN-8s's
  scheme, carried down to stride 1 because the digit strokes here are 2-3 pixels
  wide); upsampling is bilinear, the interpolation FCN initialises its deconvolutions
  with (here fixed).

References:
  Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
  Segmentation", MICCAI 2015.
  Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation",
  CVPR 2015.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers
from cnnjax.models.classic import BatchNormClassifier, conv_bn_relu, resolve_dropout


class UNet(BatchNormClassifier):
  """A small U-Net with BatchNorm: per-pixel logits ``[N, H, W, num_classes]``.

  With the defaults (``widths=(16, 32, 64)``): 118,475 parameters for 11 classes on
  one-channel inputs. Needs H and W divisible by 2 ** (len(widths) - 1). ``dropout_rate``
  > 0 adds dropout before the 1x1 head.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = UNet(num_classes=11)
    >>> x = jnp.zeros((2, 32, 48, 1))
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
    (2, 32, 48, 11)
  """
  widths: Sequence[int] = (16, 32, 64)
  output_kind: ClassVar[str] = "per_pixel"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to logits [N, H, W, num_classes] (float32)."""
    layers.check_divisible_size(x, 2 ** (len(self.widths) - 1), "unet_small",
                                f"{len(self.widths) - 1} 2x2 max pools and as many 2x upsamplings")
    rate = resolve_dropout(self.dropout_rate, 0.0, "unet_small")
    skips = []
    for level, width in enumerate(self.widths[:-1], start=1):
      x = conv_bn_relu(self, x, width, f"{level}_1", train=train)
      x = conv_bn_relu(self, x, width, f"{level}_2", train=train)
      skips.append(x)
      x = layers.MaxPool((2, 2), implementation=self.implementation, name=f"pool{level}")(x)
    bottom = len(self.widths)
    x = conv_bn_relu(self, x, self.widths[-1], f"{bottom}_1", train=train)
    x = conv_bn_relu(self, x, self.widths[-1], f"{bottom}_2", train=train)
    for level in range(len(skips), 0, -1):
      skip = skips[level - 1]
      x = layers.Upsample("nearest", name=f"up{level}")(x)
      x = jnp.concatenate([skip, x.astype(skip.dtype)], axis=-1)
      x = conv_bn_relu(self, x, self.widths[level - 1], f"up{level}_1", train=train)
      x = conv_bn_relu(self, x, self.widths[level - 1], f"up{level}_2", train=train)
    x = nn.Dropout(rate, deterministic=not train, name="dropout")(x) if rate else x
    x = layers.Conv(self.num_classes, (1, 1), dtype=self.dtype,
                    implementation=self.implementation, name="head")(x)
    return x.astype(jnp.float32)


class FCN(BatchNormClassifier):
  """A small FCN with skip connections and BatchNorm: logits ``[N, H, W, num_classes]``.

  With the defaults (``stages=((16, 16), (32, 32), (64, 64))``): 73,996 parameters for
  11 classes on one-channel inputs. Needs H and W divisible by 2 ** len(stages).
  ``dropout_rate`` > 0 adds dropout before every score conv.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = FCN(num_classes=11)
    >>> x = jnp.zeros((2, 32, 48, 1))
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
    (2, 32, 48, 11)
  """
  stages: Sequence[Sequence[int]] = ((16, 16), (32, 32), (64, 64))
  output_kind: ClassVar[str] = "per_pixel"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to logits [N, H, W, num_classes] (float32)."""
    layers.check_divisible_size(x, 2 ** len(self.stages), "fcn",
                                f"{len(self.stages)} 2x2 max pools and as many 2x upsamplings")
    rate = resolve_dropout(self.dropout_rate, 0.0, "fcn")
    # Score maps at strides 1, 2, 4 (each stage's output before its pool) and 8 (after
    # the last pool), finest last.
    maps = []
    for s, widths in enumerate(self.stages, start=1):
      for c, width in enumerate(widths, start=1):
        x = conv_bn_relu(self, x, width, f"{s}_{c}", train=train)
      maps.append(x)
      x = layers.MaxPool((2, 2), implementation=self.implementation, name=f"pool{s}")(x)
    maps.append(x)
    score = None
    for level in range(len(maps) - 1, -1, -1):
      features = maps[level]
      if rate:
        features = nn.Dropout(rate, deterministic=not train, name=f"dropout{level}")(features)
      own = layers.Conv(self.num_classes, (1, 1), dtype=self.dtype,
                        implementation=self.implementation, name=f"score{level}")(features)
      if score is not None:
        own = own + layers.Upsample(name=f"up{level}")(score).astype(own.dtype)
      score = own
    return score.astype(jnp.float32)
