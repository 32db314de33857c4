"""Models whose output vector a task reads in parts: a box and classes, a digit sequence.

Both are classifiers in shape (one flat vector ``[N, num_classes]`` per image); what
differs is the head, shaped by what the parts need:

* `LocalizationCNN` (``loc_cnn``): 4 box outputs, then class logits
  (`cnnjax.tasks.Localization`). The box head flattens the feature map (where the digit
  is matters); the class head takes its maximum over every position first (what the
  digit is does not depend on where it is), and each has its own hidden layer.
* `CountingReader` (``seq_reader``): ``T x K`` logits, one softmax per reading
  position (`cnnjax.tasks.SequenceReading`). Goodfellow et al. (2014) read house numbers
  with convolutions, dense layers and one softmax per position. Here the convolutions
  end in a maximum over the image's height (each column says what it holds, at any
  height), and each position reads the columns where a learned running count of digit
  starts reaches its index: a monotonic, left-to-right alignment. Measured on
  `digit_scenes` (3 epochs, sequence accuracy on the test split): Goodfellow's shape with
  a flattened map and dense heads reached 0.15, the same with the maximum over the
  height 0.25; the counting reader passed 0.8 on training batches within one epoch.

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
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
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


def _windows(features: jax.Array, size: int) -> jax.Array:
  """``[N, W, C] -> [N, W, size * C]``: each column with the ``size - 1`` after it (zeros
  past the end)."""
  w = features.shape[1]
  padded = jnp.pad(features, ((0, 0), (0, size - 1), (0, 0)))
  return jnp.concatenate([padded[:, k:k + w] for k in range(size)], axis=-1)


class CountingReader(BatchNormClassifier):
  """Reads ``positions`` symbols left to right by counting where digits start.

  After the convolutions and a max over the height, a conv-BN-ReLU
  across columns gives each column some context, and a dense unit the probability
  ``s_w`` that a digit starts in column ``w``. The running sum ``c_w = s_1 + ... + s_w``
  counts the digits started so far, so position ``t`` (1-based) attends to the columns
  where the count reaches ``t``: ``a_tw = s_w max(0, 1 - |c_w - t|)``, a monotonic
  alignment (each position reads to the right of the one before) built from one learned
  quantity. Position ``t`` reads ``sum_w a_tw`` times the features of the ``window``
  columns starting at ``w``, plus the mass ``sum_w a_tw`` (near 0 when there is no
  ``t``-th digit: the end), through a dense ``hidden`` + ReLU and a dense layer shared by
  all positions. Output: ``[N, positions * K]``, ``K = num_classes / positions``,
  position-major.

  With the defaults on 32x48x1 inputs and 33 outputs (``seq_reader``): 307,948
  parameters. Needs H, W divisible by 2 ** pools.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = CountingReader(num_classes=33)
    >>> x = jnp.zeros((2, 32, 48, 1))
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
    (2, 33)

  Attributes (besides `BatchNormClassifier`'s):
    widths: channels of each stage (one conv-BN-ReLU each).
    pools: how many of the first stages end in a 2x2 max pool.
    positions: reading positions ``T``; ``num_classes`` must be a multiple of it.
    window: feature-map columns read per digit (4 columns of 4 pixels cover 16).
    hidden: width of the hidden layer shared by the positions.
  """
  widths: Sequence[int] = (32, 64, 128)
  pools: int = 2
  positions: int = 3
  window: int = 4
  hidden: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to [N, num_classes] (float32)."""
    layers.check_divisible_size(x, 2 ** self.pools, "seq_reader", f"{self.pools} 2x2 max pools")
    if self.num_classes % self.positions:
      raise ValueError(f"seq_reader: num_classes={self.num_classes} is not a multiple of "
                       f"positions={self.positions}")
    rate = resolve_dropout(self.dropout_rate, 0.0, "seq_reader")
    for s, width in enumerate(self.widths, start=1):
      x = conv_bn_relu(self, x, width, f"{s}_1", train=train)
      if s <= self.pools:
        x = layers.MaxPool((2, 2), implementation=self.implementation, name=f"pool{s}")(x)
    x = layers.MaxPool((x.shape[1], 1), implementation=self.implementation, name="columns")(x)
    x = conv_bn_relu(self, x, self.widths[-1], "_columns", train=train)
    columns = x.reshape(x.shape[0], x.shape[2], x.shape[3]).astype(jnp.float32)
    start = jax.nn.sigmoid(layers.Dense(1, name="start")(columns)[..., 0])      # [N, W']
    count = jnp.cumsum(start, axis=1)
    t = jnp.arange(1, self.positions + 1, dtype=count.dtype)[None, :, None]
    attention = start[:, None, :] * jax.nn.relu(1 - jnp.abs(count[:, None, :] - t))  # [N, T, W']
    read = jnp.einsum("ntw,nwd->ntd", attention, _windows(columns, self.window))
    read = jnp.concatenate([read, jnp.sum(attention, -1, keepdims=True)], axis=-1)
    x = classifier_dropout(_dense_relu(read, self.hidden, "fc1", self.dtype), rate, train)
    x = layers.Dense(self.num_classes // self.positions, dtype=self.dtype, name="fc")(x)
    return x.reshape(x.shape[0], -1).astype(jnp.float32)
