"""VGG-style CNN with BatchNorm, sized for 32x32 images (Simonyan & Zisserman 2015).

References:
  Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
  Recognition", ICLR 2015 (stacks of 3x3 convs between 2x2 max pools).
  Ioffe & Szegedy, "Batch Normalization", ICML 2015.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers
from cnnjax.models.classic import (
    BatchNormClassifier, classifier_dropout, conv_bn_relu_stages, resolve_dropout)


class VGG(BatchNormClassifier):
  """Stages of [3x3 conv (pad 1, no bias), BatchNorm, ReLU] x k, each ending in a 2x2 max pool.

  The head is a global average pool then Dense(num_classes) (instead of VGG's
  4096-wide dense layers, which would dominate the parameter count on 32x32
  inputs), so the parameter count does not depend on the input size. No dropout
  in the definition: ``dropout_rate > 0`` adds dropout before the Dense. Needs
  H, W >= 2 ** len(stages). ``vgg_small`` = stages ((64, 64), (128, 128),
  (256, 256)): 1,148,874 parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = VGG(num_classes=10, stages=((8,), (16,)))
    >>> x = jnp.zeros((2, 8, 8, 1))
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
    (2, 10)
  """
  stages: Sequence[Sequence[int]] = ((64, 64), (128, 128), (256, 256))

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to logits [N, num_classes] (float32)."""
    layers.check_min_size(x, 2 ** len(self.stages), "VGG",
                          f"{len(self.stages)} 2x2 valid max pools")
    rate = resolve_dropout(self.dropout_rate, 0.0, "VGG")
    x = conv_bn_relu_stages(self, x, self.stages, train=train)
    x = layers.GlobalAvgPool(implementation=self.implementation, name="global_pool")(x)
    x = classifier_dropout(x, rate, train)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)
