"""The train step that the timing commands measure: `experiments.benchmark`, `experiments.profile_step`.

`build(name, input_shape, batch_size, ...)` assembles the run a training job of model
``name`` would build (the default config: Adam, softmax cross-entropy, no augmentation,
the CPU micro-batch rule) on synthetic data of the model's input shape;
`synthetic_batch` is a batch already on the device. No flags: both commands define
their own.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cnnjax import config as config_lib
from cnnjax.data import catalog, pipeline
from cnnjax.training import build as build_lib

# The models of the scene tasks (per-pixel, box and reading heads): not image classifiers,
# so neither timed nor given a PyTorch twin.
SCENE_MODELS = ("fcn", "unet_small", "tiny_unet", "loc_cnn", "seq_reader")

# Each model on the images of its dataset: CIFAR for the CIFAR models, MNIST for the
# MNIST ones, digits for bn_cnn (the default run's model).
INPUT_SHAPES = {"simple_cnn": (32, 32, 3), "keras_cifar_cnn": (32, 32, 3),
                "mnist_cnn": (28, 28, 1), "lenet5": (28, 28, 1), "bn_cnn": (8, 8, 1),
                "vgg_small": (32, 32, 3), "resnet20": (32, 32, 3), "resnet18": (32, 32, 3),
                "tiny_cnn": (8, 8, 1)}
_PIPELINE_DATASET = {1: "mnist", 3: "cifar10"}  # by channels; the shape comes from the model


def synthetic_dataset(input_shape, batch_size: int, steps: int) -> pipeline.Dataset:
  """``steps`` batches of uniform random uint8 images and labels in the catalog's shape."""
  name = _PIPELINE_DATASET.get(input_shape[-1], "cifar10")
  info = catalog.dataset_info(name)
  if tuple(info.image_shape) != tuple(input_shape):
    info = catalog.DatasetInfo(name, tuple(input_shape), 10)
  rng = np.random.default_rng(0)
  n = batch_size * steps
  train = (rng.integers(0, 256, (n, *input_shape), dtype=np.uint8), rng.integers(0, 10, n))
  test = (train[0][:batch_size], train[1][:batch_size])
  return pipeline.Dataset(info, train, test, batch_size=batch_size, eval_batch_size=batch_size)


def synthetic_batch(input_shape, batch_size: int) -> dict[str, jnp.ndarray]:
  """Uniform [0, 1) float32 images and labels in [0, 10), already on the device."""
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.random((batch_size, *input_shape), np.float32)),
          "label": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)}


def build(name: str, input_shape, batch_size: int, implementation: str = "auto",
          microbatches: int = 0, optimizer: str = "adam",
          sam_base: str = "adam") -> build_lib.Run:
  """The run a training job of ``name`` would build (default config: Adam, cross-entropy)."""
  config = config_lib.get_config()
  config.model, config.batch_size, config.eval_batch_size = name, batch_size, batch_size
  config.augment.crop_padding, config.validation_fraction = 0, 0.0
  config.optimizer.name, config.optimizer.sam_base = optimizer, sam_base
  config_lib.validate(config)
  return build_lib.build_run(config, data=synthetic_dataset(input_shape, batch_size, 1),
                             implementation=implementation, microbatches=microbatches)
