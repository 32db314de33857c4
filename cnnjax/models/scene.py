"""Models whose output vector a task reads in parts: a box and classes, a digit sequence.

Both are classifiers in shape (one flat vector ``[N, num_classes]`` per image); what
differs is the head, shaped by what the parts need:

* `LocalizationCNN` (``loc_cnn``): 4 box outputs, then class logits
  (`cnnjax.tasks.Localization`). The box head flattens the feature map (where the digit
  is matters); the class head takes its maximum over every position first (what the
  digit is does not depend on where it is), and each has its own hidden layer.
* `ColumnReader` (``seq_reader``): ``T x K`` logits, one softmax per reading position
  (`cnnjax.tasks.SequenceReading`). Goodfellow et al. (2014) read house numbers with
  convolutions, dense layers and one softmax per position; this keeps that shape and
  takes the maximum over the image's **height** after the convolutions, so each column
  of the feature map says what is in that column wherever the digit sits vertically,
  and the dense layers see the columns in order, which is what reading left to right
  depends on.

References:
  Goodfellow, Bulatov, Ibarz, Arnoud & Shet, "Multi-digit Number Recognition from Street
  View Imagery using Deep Convolutional Neural Networks", ICLR 2014.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers
from cnnjax.models.classic import (
    BatchNormClassifier, classifier_dropout, conv_bn_relu, conv_bn_relu_stages, resolve_dropout)


def _dense_relu(x: jax.Array, width: int, name: str, dtype) -> jax.Array:
  return layers.ReLU(name=f"{name}_relu")(layers.Dense(width, dtype=dtype, name=name)(x))


class LocalizationCNN(BatchNormClassifier):
  """conv-BN-ReLU stages with 2x2 max pools, then a box head and a class head.

  Outputs ``[N, num_classes]``: 4 box outputs (flatten, dense ``hidden`` + ReLU, dense 4),
  then ``num_classes - 4`` class logits (max over positions, dense ``hidden`` + ReLU,
  dense). With the defaults on 32x48x1 inputs and 14 outputs: 225,614 parameters.
  Needs H, W >= 2 ** len(widths). ``dropout_rate`` > 0 adds dropout after both hidden
  layers.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = LocalizationCNN(num_classes=14)
    >>> x = jnp.zeros((2, 32, 48, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (2, 14)

  Attributes (besides `BatchNormClassifier`'s):
    widths: channels of each stage (one conv-BN-ReLU each).
    hidden: width of each head's hidden layer.
  """
  widths: Sequence[int] = (16, 32, 64)
  hidden: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to [N, 4 + classes] (float32)."""
    layers.check_min_size(x, 2 ** len(self.widths), "loc_cnn",
                          f"{len(self.widths)} 2x2 valid max pools")
    if self.num_classes <= 4:
      raise ValueError(f"loc_cnn: num_classes={self.num_classes} must exceed the 4 box outputs")
    rate = resolve_dropout(self.dropout_rate, 0.0, "loc_cnn")
    x = conv_bn_relu_stages(self, x, [(w,) for w in self.widths], train=train)
    box = _dense_relu(layers.Flatten(name="flatten")(x), self.hidden, "box_fc1", self.dtype)
    box = classifier_dropout(box, rate, train, name="box_dropout")
    box = layers.Dense(4, dtype=self.dtype, name="box_fc")(box)
    anywhere = layers.MaxPool(x.shape[1:3], implementation=self.implementation,
                              name="class_pool")(x).reshape(x.shape[0], -1)
    logits = _dense_relu(anywhere, self.hidden, "class_fc1", self.dtype)
    logits = classifier_dropout(logits, rate, train, name="class_dropout")
    logits = layers.Dense(self.num_classes - 4, dtype=self.dtype, name="class_fc")(logits)
    return jnp.concatenate([box, logits], axis=-1).astype(jnp.float32)


class ColumnReader(BatchNormClassifier):
  """conv-BN-ReLU stages (2x2 max pools after the first ``pools``), max over the height,
  flatten, dense ``hidden`` + ReLU, dense ``num_classes``.

  With the defaults on 32x48x1 inputs and 33 outputs (``seq_reader``): 494,849
  parameters. Needs H, W divisible by 2 ** pools. ``dropout_rate`` > 0 adds dropout
  after the hidden layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = ColumnReader(num_classes=33)
    >>> x = jnp.zeros((2, 32, 48, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (2, 33)

  Attributes (besides `BatchNormClassifier`'s):
    widths: channels of each stage (one conv-BN-ReLU each).
    pools: how many of the first stages end in a 2x2 max pool.
    hidden: width of the hidden dense layer.
  """
  widths: Sequence[int] = (32, 64, 128)
  pools: int = 2
  hidden: int = 256

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to [N, num_classes] (float32)."""
    layers.check_divisible_size(x, 2 ** self.pools, "seq_reader", f"{self.pools} 2x2 max pools")
    rate = resolve_dropout(self.dropout_rate, 0.0, "seq_reader")
    for s, width in enumerate(self.widths, start=1):
      x = conv_bn_relu(self, x, width, f"{s}_1", train=train)
      if s <= self.pools:
        x = layers.MaxPool((2, 2), implementation=self.implementation, name=f"pool{s}")(x)
    # [N, H', W', C] -> [N, 1, W', C]: what each column holds, at any height.
    x = layers.MaxPool((x.shape[1], 1), implementation=self.implementation, name="columns")(x)
    x = _dense_relu(layers.Flatten(name="flatten")(x), self.hidden, "fc1", self.dtype)
    x = classifier_dropout(x, rate, train)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)
