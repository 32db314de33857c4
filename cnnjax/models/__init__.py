"""Flax Linen CNNs, by name.

Every model is called as ``model.apply(variables, x, train=...)`` on NHWC images
``x`` [N, H, W, C] and returns float32 logits [N, num_classes] (no softmax), except the
segmentation models (``unet_small``, ``fcn``: `output_kind` ``"per_pixel"``), which
return per-pixel logits [N, H, W, num_classes], and ``embedding_cnn``, an embedding of
``num_classes`` dimensions. A GAN's generator and discriminator are a pair with another
contract: `GAN_MODELS` (`cnnjax.models.gan`).
Fields shared by all: ``num_classes``, ``dtype`` (compute dtype; parameters are
always float32) and ``dropout_rate`` (None = the model's own default). BatchNorm
models also take ``bn_axis_name`` and ``bn_ghost_batches`` (see
`cnnjax.models.layers.BatchNorm`).

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = get_model("bn_cnn", num_classes=10)
  >>> x = jnp.zeros((4, 8, 8, 1))
  >>> variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), x, train=False)
  >>> sorted(variables)
  ['batch_stats', 'params']
  >>> train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  >>> logits, updates = train(variables, x)
  >>> logits.shape, logits.dtype
  ((4, 10), dtype('float32'))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from cnnjax.models import layers
from cnnjax.models.classic import BNCNN, KerasCifarCNN, LeNet5, MnistCNN, SimpleCNN
from cnnjax.models.embedding import EmbeddingCNN
from cnnjax.models.gan import DCGAN, GAN_MODELS
from cnnjax.models.resnet import BasicBlock, CifarResNet
from cnnjax.models.scene import CountingReader, LocalizationCNN
from cnnjax.models.segmentation import FCN, UNet
from cnnjax.models.vgg import VGG

ResNet20 = functools.partial(CifarResNet, stage_sizes=(3, 3, 3), widths=(16, 32, 64),
                             shortcut="A")
ResNet18 = functools.partial(CifarResNet, stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512),
                             shortcut="B")
VGGSmall = functools.partial(VGG, stages=((64, 64), (128, 128), (256, 256)))
# For fast tests elsewhere: one conv-BN-ReLU per stage, 4 and 8 channels (~1k params).
TinyCNN = functools.partial(BNCNN, widths=(4, 8), convs_per_stage=1)
# For fast tests of the segmentation task: one pool, 4 and 8 channels.
TinyUNet = functools.partial(UNet, widths=(4, 8))

MODELS: dict[str, Callable[..., nn.Module]] = {
    "simple_cnn": SimpleCNN,
    "keras_cifar_cnn": KerasCifarCNN,
    "mnist_cnn": MnistCNN,
    "lenet5": LeNet5,
    "bn_cnn": BNCNN,
    "vgg_small": VGGSmall,
    "resnet20": ResNet20,
    "resnet18": ResNet18,
    "tiny_cnn": TinyCNN,
    "embedding_cnn": EmbeddingCNN,
    "unet_small": UNet,
    "fcn": FCN,
    "tiny_unet": TinyUNet,
    "loc_cnn": LocalizationCNN,
    "seq_reader": CountingReader,
}

# Options that only say how to run BatchNorm; harmless to drop for models without it.
_BN_OPTIONS = ("bn_axis_name", "bn_ghost_batches")


def _module_class(factory: Callable[..., nn.Module]) -> type[nn.Module]:
  while isinstance(factory, functools.partial):
    factory = factory.func
  return factory  # type: ignore[return-value]


def model_names() -> list[str]:
  """Sorted names accepted by `get_model`."""
  return sorted(MODELS)


def has_batch_norm(name: str) -> bool:
  """Whether model ``name`` has BatchNorm layers (so a 'batch_stats' collection)."""
  _check_name(name)
  fields = {f.name for f in dataclasses.fields(_module_class(MODELS[name]))}
  return "bn_axis_name" in fields


def model_fields(name: str) -> set[str]:
  """The fields model ``name`` accepts (what `get_model` takes besides ``num_classes``).

  Example:
    >>> "normalize" in model_fields("embedding_cnn"), "normalize" in model_fields("bn_cnn")
    (True, False)
  """
  _check_name(name)
  return {f.name for f in dataclasses.fields(_module_class(MODELS[name]))} - {"parent", "name"}


def output_kind(name: str) -> str:
  """``"vector"`` ([N, num_classes]) or ``"per_pixel"`` ([N, H, W, num_classes]) for ``name``."""
  _check_name(name)
  return _module_class(MODELS[name]).output_kind


def _check_name(name: str) -> None:
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; expected one of {model_names()}")


def get_model(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds model ``name`` with ``num_classes`` outputs.

  Args:
    name: a key of `MODELS`.
    num_classes: number of logits.
    **kwargs: module fields, e.g. ``dtype``, ``dropout_rate``, ``bn_axis_name``,
      ``bn_ghost_batches``. The two BatchNorm options are ignored by models
      without BatchNorm (there is nothing for them to act on), so a training
      loop can pass them unconditionally. Any other unknown field raises
      TypeError.

  Returns:
    The unbound Flax module.

  Example:
    >>> get_model("resnet20", num_classes=10).shortcut
    'A'
  """
  _check_name(name)
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  factory = MODELS[name]
  fields = model_fields(name)
  if not has_batch_norm(name):
    kwargs = {k: v for k, v in kwargs.items() if k not in _BN_OPTIONS}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise TypeError(f"Model {name!r} has no option(s) {unknown}; it accepts {sorted(fields)}")
  return factory(num_classes=num_classes, **kwargs)


__all__ = [
    "BNCNN", "BasicBlock", "CifarResNet", "CountingReader", "DCGAN", "EmbeddingCNN", "FCN",
    "GAN_MODELS", "KerasCifarCNN", "LeNet5", "LocalizationCNN", "MODELS", "MnistCNN",
    "ResNet18", "ResNet20", "SimpleCNN", "TinyCNN", "TinyUNet", "UNet", "VGG", "VGGSmall",
    "get_model", "has_batch_norm", "layers", "model_fields", "model_names", "output_kind",
]
