"""The small CNNs of the source tutorials, LeNet-5, and the BatchNorm digits CNN.

All take NHWC images and return float32 logits [batch, num_classes] (no softmax:
the losses apply it). Layer names follow the source descriptions (conv1, pool1,
fc1, ...) so the layer table of `experiments/inspect.py` reads like them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers
from cnnjax.models.layers import Dtype


class Classifier(nn.Module):
  """Fields every cnnjax model has (see `cnnjax.models`).

  Attributes:
    num_classes: output logits.
    dtype: compute dtype (parameters stay float32).
    dropout_rate: None = the model's own default.
    implementation: the convolution / pooling formulation of `fast_ops`, passed to
      every such layer (``"auto"``: see `cnnjax.models.fast_ops.resolve`).
  """
  num_classes: int
  dtype: Dtype = jnp.float32
  dropout_rate: float | None = None
  implementation: str = "auto"
  # What the model returns per image: "vector" ([N, num_classes]) or "per_pixel"
  # ([N, H, W, num_classes], the segmentation models). Tasks check it (`cnnjax.config`).
  output_kind: ClassVar[str] = "vector"


class BatchNormClassifier(Classifier):
  """`Classifier` fields plus the two that say how to run BatchNorm.

  Attributes:
    bn_axis_name: pmap/shard_map axis for cross-replica BatchNorm statistics.
    bn_ghost_batches: G groups with separate BatchNorm statistics (see
      `layers.BatchNorm`).
  """
  bn_axis_name: str | None = None
  bn_ghost_batches: int = 1


def fuses_batch_norm(module: nn.Module, train: bool) -> bool:
  """Whether ``module`` runs BatchNorm -> (add ->) ReLU as one op (`layers.batch_norm_relu`).

  In training, unless intermediates are captured: inspection must see the ReLU
  outputs as layers of their own.
  """
  return train and not module.is_mutable_collection("intermediates")


def conv_relu_pool_blocks(module: nn.Module, x: jax.Array, features: Sequence[int], *,
                          kernel_size: tuple[int, int], padding, pool_padding: str,
                          train: bool) -> jax.Array:
  """Blocks conv{i} -> relu{i} -> pool{i} (2x2), i = 1, 2, ..., in ``module``'s scope.

  Each block is one fused op in training (`layers.conv_relu_max_pool`), but
  not while intermediates are captured: inspection must see the ReLU and
  pooling outputs as separate layers. The parameters are the same either way.
  """
  fused = train and not module.is_mutable_collection("intermediates")
  for i, width in enumerate(features, start=1):
    x = layers.conv_relu_max_pool(
        x, layers.Conv(width, kernel_size, padding=padding, dtype=module.dtype,
                       implementation=module.implementation, name=f"conv{i}"),
        window=(2, 2), pool_padding=pool_padding, relu_name=f"relu{i}", pool_name=f"pool{i}",
        fused=fused)
  return x


def conv_bn_relu_stages(module: nn.Module, x: jax.Array, stages: Sequence[Sequence[int]], *,
                        train: bool) -> jax.Array:
  """VGG stages conv{s}_{c} -> bn{s}_{c} -> relu{s}_{c} ... -> pool{s} in ``module``.

  One 3x3 conv unit per width c of stage s, then a 2x2 max pool. The
  convolutions have no bias (BatchNorm's shift replaces it); BatchNorm follows
  ``module``'s ``bn_axis_name`` and ``bn_ghost_batches``.
  """
  for s, widths in enumerate(stages, start=1):
    for c, width in enumerate(widths, start=1):
      x = conv_bn_relu(module, x, width, f"{s}_{c}", train=train)
    x = layers.MaxPool((2, 2), implementation=module.implementation, name=f"pool{s}")(x)
  return x


def conv_bn_relu(module: nn.Module, x: jax.Array, width: int, suffix: str, *,
                 train: bool) -> jax.Array:
  """conv{suffix} (3x3, pad 1, no bias) -> bn{suffix} -> relu{suffix} in ``module``'s scope.

  BatchNorm follows ``module``'s ``bn_axis_name`` and ``bn_ghost_batches``; in
  training it and the ReLU are one op (`fuses_batch_norm`).
  """
  x = layers.Conv(width, (3, 3), padding=1, use_bias=False, dtype=module.dtype,
                  implementation=module.implementation, name=f"conv{suffix}")(x)
  bn = layers.BatchNorm(use_running_average=not train, axis_name=module.bn_axis_name,
                        ghost_batches=module.bn_ghost_batches, dtype=module.dtype,
                        implementation=module.implementation, name=f"bn{suffix}")
  return layers.batch_norm_relu(x, bn, relu_name=f"relu{suffix}",
                                fused=fuses_batch_norm(module, train))


def resolve_dropout(rate: float | None, default: float, model: str) -> float:
  """Returns ``default`` when ``rate`` is None, else ``rate`` after range checking."""
  rate = default if rate is None else float(rate)
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"{model}: dropout_rate must be in [0, 1), got {rate}")
  return rate


def classifier_dropout(x: jax.Array, rate: float, train: bool, name: str = "dropout"):
  """Dropout (rng stream 'dropout') when ``rate > 0``; identity otherwise."""
  if rate > 0:
    x = nn.Dropout(rate, deterministic=not train, name=name)(x)
  return x


class SimpleCNN(Classifier):
  """The source's PyTorch-style CNN (designed for 32x32x3).

  Conv(16, 3x3, pad 1) ReLU MaxPool2 -> Conv(32, 3x3, pad 1) ReLU MaxPool2 ->
  Flatten -> Dense(256) ReLU -> Dense(num_classes). No dropout in the
  definition: ``dropout_rate > 0`` adds dropout before the last Dense.
  Needs H, W >= 4 (two 2x2 valid pools). 532,202 parameters on 32x32x3.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = SimpleCNN(num_classes=10)
    >>> x = jnp.zeros((2, 32, 32, 3))
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
    (2, 10)
  """
  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to logits [N, num_classes] (float32)."""
    layers.check_min_size(x, 4, "simple_cnn", "two 2x2 valid max pools")
    rate = resolve_dropout(self.dropout_rate, 0.0, "simple_cnn")
    dt = self.dtype
    x = conv_relu_pool_blocks(self, x, (16, 32), kernel_size=(3, 3), padding=1,
                              pool_padding="VALID", train=train)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, dtype=dt, name="fc1")(x)
    x = layers.ReLU(name="relu3")(x)
    x = classifier_dropout(x, rate, train)
    x = layers.Dense(self.num_classes, dtype=dt, name="fc2")(x)
    return x.astype(jnp.float32)


class KerasCifarCNN(Classifier):
  """The TensorFlow CNN tutorial's CIFAR-10 model.

  Conv(32, 3x3, valid) ReLU MaxPool2 -> Conv(64, 3x3, valid) ReLU MaxPool2 ->
  Conv(64, 3x3, valid) ReLU -> Flatten -> Dense(64) ReLU -> Dense(num_classes).
  122,570 parameters on 32x32x3 (the tutorial's ``model.summary()``).

  Minimum input 18x18: the spatial size goes H -> H-2 -> (H-2)//2 -> that-2 ->
  //2 -> that-2, and the last must be >= 1, i.e. (((H-2)//2 - 2)//2) >= 3,
  (H-2)//2 >= 8, H >= 18. So 8x8 inputs are refused; 28x28 and 32x32 work.
  """
  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to logits [N, num_classes] (float32)."""
    layers.check_min_size(
        x, 18, "keras_cifar_cnn", "three valid 3x3 convs and two 2x2 valid max pools")
    rate = resolve_dropout(self.dropout_rate, 0.0, "keras_cifar_cnn")
    dt = self.dtype
    x = conv_relu_pool_blocks(self, x, (32, 64), kernel_size=(3, 3), padding="VALID",
                              pool_padding="VALID", train=train)
    x = layers.Conv(64, (3, 3), padding="VALID", dtype=dt, implementation=self.implementation,
                    name="conv3")(x)
    x = layers.ReLU(name="relu3")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, dtype=dt, name="fc1")(x)
    x = layers.ReLU(name="relu4")(x)
    x = classifier_dropout(x, rate, train)
    x = layers.Dense(self.num_classes, dtype=dt, name="fc2")(x)
    return x.astype(jnp.float32)


class MnistCNN(Classifier):
  """The source's MNIST model (TensorFlow "Deep MNIST" architecture).

  Conv(32, 5x5, same) ReLU MaxPool2(same) -> Conv(64, 5x5, same) ReLU
  MaxPool2(same) -> Flatten -> Dense(1024) ReLU -> Dropout(0.5) ->
  Dense(num_classes). 'same' pooling rounds up (ceil(H/2)), so any H >= 1
  works; 3,274,634 parameters on 28x28x1.
  """
  # dropout_rate None = 0.5, the source's value.

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to logits [N, num_classes] (float32)."""
    layers.check_image_batch(x, "mnist_cnn")
    rate = resolve_dropout(self.dropout_rate, 0.5, "mnist_cnn")
    dt = self.dtype
    x = conv_relu_pool_blocks(self, x, (32, 64), kernel_size=(5, 5), padding="SAME",
                              pool_padding="SAME", train=train)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(1024, dtype=dt, name="fc1")(x)
    x = layers.ReLU(name="relu3")(x)
    x = classifier_dropout(x, rate, train)
    x = layers.Dense(self.num_classes, dtype=dt, name="fc2")(x)
    return x.astype(jnp.float32)


class LeNet5(Classifier):
  """LeNet-5 (LeCun et al. 1998) in its common modern form.

  Conv(6, 5x5, pad 2) tanh AvgPool2 -> Conv(16, 5x5, valid) tanh AvgPool2 ->
  Flatten -> Dense(120) tanh -> Dense(84) tanh -> Dense(num_classes).
  The first conv pads by 2 so a 28x28 MNIST digit gives the paper's 28x28 C1
  map (the paper padded the digits to 32x32 instead); on 28x28x1 this is the
  classic 61,706-parameter network. Simplifications versus the paper: plain
  average pooling instead of trainable subsampling, full C3 connectivity, a
  dense output instead of RBF units. Minimum input 12x12: H -> H//2 -> H//2-4
  -> //2 >= 1 needs H//2 >= 6.
  """
  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to logits [N, num_classes] (float32)."""
    layers.check_min_size(
        x, 12, "lenet5", "a padded 5x5 conv, a 2x2 pool, a valid 5x5 conv and a 2x2 pool")
    rate = resolve_dropout(self.dropout_rate, 0.0, "lenet5")
    dt = self.dtype
    impl = self.implementation
    x = layers.Conv(6, (5, 5), padding=2, dtype=dt, implementation=impl, name="conv1")(x)
    x = layers.Tanh(name="tanh1")(x)
    x = layers.AvgPool((2, 2), implementation=impl, name="pool1")(x)
    x = layers.Conv(16, (5, 5), padding="VALID", dtype=dt, implementation=impl, name="conv2")(x)
    x = layers.Tanh(name="tanh2")(x)
    x = layers.AvgPool((2, 2), implementation=impl, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, dtype=dt, name="fc1")(x)
    x = layers.Tanh(name="tanh3")(x)
    x = layers.Dense(84, dtype=dt, name="fc2")(x)
    x = layers.Tanh(name="tanh4")(x)
    x = classifier_dropout(x, rate, train)
    x = layers.Dense(self.num_classes, dtype=dt, name="fc3")(x)
    return x.astype(jnp.float32)


class BNCNN(BatchNormClassifier):
  """The default digits model: stages of [3x3 conv, BatchNorm, ReLU] x k + 2x2 max pool.

  With the defaults (``widths=(32, 64)``, ``convs_per_stage=2``): two 3x3
  conv-32 with BatchNorm+ReLU, 2x2 max pool, two 3x3 conv-64 with
  BatchNorm+ReLU, 2x2 max pool, flatten, Dense(num_classes): 67,754 parameters
  on 8x8x1. Convs have no bias (the BatchNorm shift replaces it). Needs H, W >=
  2 ** len(widths) (one 2x2 valid pool per stage).

  Attributes (besides `BatchNormClassifier`'s; dropout_rate None/0 = none, > 0 adds
  dropout before the Dense):
    widths: channels of each stage.
    convs_per_stage: conv-BN-ReLU units before each pool.
  """
  widths: Sequence[int] = (32, 64)
  convs_per_stage: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to logits [N, num_classes] (float32)."""
    name = type(self).__name__
    layers.check_min_size(x, 2 ** len(self.widths), name,
                          f"{len(self.widths)} 2x2 valid max pools")
    rate = resolve_dropout(self.dropout_rate, 0.0, name)
    x = conv_bn_relu_stages(self, x, [(w,) * self.convs_per_stage for w in self.widths],
                            train=train)
    x = layers.Flatten(name="flatten")(x)
    x = classifier_dropout(x, rate, train)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)
