"""The reference classifier of a dataset: trained once by cnnjax, cached beside the data.

The generation task scores samples in the features of a classifier of the same dataset
(the role Inception-v3 plays for the FID of Heusel et al. 2017): its penultimate
features (the input of its last Dense layer) for the Fréchet distance, its softmax for
the confidence and class coverage of the samples. The classifier is trained with
cnnjax's default digits recipe (`recipe`: AdamW 3e-3, cosine decay, weight decay 5e-4,
batch 32, +-1 pixel shifts, seed 0) but *without* label smoothing, which would cap its
confidence near 0.91 on any image. Training is deterministic, so the cache is a
function of (dataset, model, epochs): ``<data_dir>/cnnjax_reference/<dataset>/<model>-
<epochs>ep/`` holds ``variables.msgpack``, ``reference.json`` (test accuracy, seconds)
and the run's own directory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization

# Models whose penultimate features are the output of their layer "flatten".
MODELS = ("bn_cnn", "tiny_cnn")
FEATURE_LAYER = "flatten"


@dataclasses.dataclass(frozen=True)
class Reference:
  """A trained classifier: `features` gives ``(penultimate features, probabilities)``."""
  model: nn.Module
  variables: Any
  test_accuracy: float
  directory: str
  _gaussians: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def gaussian(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, covariance)`` in float64 of the features of ``images`` ``[N, H, W, C]``
    (remembered per image set: the training images' Gaussian is asked for by every run of
    a study)."""
    key = hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()
    if key not in self._gaussians:
      features = jax.jit(lambda x: self.features(x)[0])
      f = np.concatenate([np.asarray(features(images[i:i + 512]), np.float64)
                          for i in range(0, len(images), 512)])
      self._gaussians[key] = (f.mean(axis=0), np.cov(f, rowvar=False))
    return self._gaussians[key]

  def features(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``images [N, H, W, C] -> (features [N, F], softmax probabilities [N, classes])``."""
    logits, state = self.model.apply(
        self.variables, images, train=False, mutable=["intermediates"],
        capture_intermediates=lambda module, method: module.name == FEATURE_LAYER)
    features = state["intermediates"][FEATURE_LAYER]["__call__"][0]
    return features.astype(jnp.float32), jax.nn.softmax(logits, axis=-1)


def recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The reference classifier's run config for ``config``'s dataset and ``gan`` section."""
  from cnnjax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.get_config()
  c.dataset, c.data_dir = config.dataset, config.data_dir
  c.model, c.num_epochs = config.gan.reference_model, config.gan.reference_epochs
  c.batch_size, c.augment.crop_padding = 32, 1
  c.optimizer.name, c.optimizer.learning_rate = "adamw", 3e-3
  c.optimizer.schedule, c.optimizer.weight_decay = "cosine", 5e-4
  c.parallel, c.progress, c.seed = "none", "none", 0
  return c


def directory(config: ml_collections.ConfigDict) -> str:
  from cnnjax.data import sources  # pylint: disable=g-import-not-at-top
  g = config.gan
  return os.path.join(sources.resolve_data_dir(config.data_dir), "cnnjax_reference",
                      config.dataset, f"{g.reference_model}-{g.reference_epochs}ep")


def _train(ref: ml_collections.ConfigDict, where: str) -> tuple[Any, dict[str, Any]]:
  """Trains the recipe in ``where/run``; returns its final variables and its summary."""
  from cnnjax.training import build, checkpoint, loop  # pylint: disable=g-import-not-at-top
  print(f"training the reference classifier of {ref.dataset} ({ref.model}, {ref.num_epochs} "
        f"epochs; once, cached in {where})", file=sys.stderr, flush=True)
  t = time.perf_counter()
  summary = loop.train_and_evaluate(ref, os.path.join(where, "run"))
  template = build.build_run(ref).state
  ckpt = checkpoint.Checkpointer(os.path.join(where, "run", "checkpoints"), keep=1)
  try:
    _, state, _ = ckpt.restore_latest(template)
  finally:
    ckpt.close()
  variables = {"params": state.eval_params(), "batch_stats": state.batch_stats}
  return variables, {"test_accuracy": summary["test_accuracy"], "test_loss": summary["test_loss"],
                     "seconds": time.perf_counter() - t, "model": ref.model,
                     "epochs": ref.num_epochs, "dataset": ref.dataset}


def load(config: ml_collections.ConfigDict) -> Reference:
  """The reference classifier for ``config`` (trained and cached on first use; read once
  per process)."""
  from cnnjax.data import catalog  # pylint: disable=g-import-not-at-top
  where = directory(config)
  weights, record_path = os.path.join(where, "variables.msgpack"), os.path.join(where,
                                                                                "reference.json")
  if not (os.path.exists(weights) and os.path.exists(record_path)):
    variables, record = _train(recipe(config), where)
    for path, payload in ((weights, serialization.msgpack_serialize(jax.device_get(variables))),
                          (record_path, json.dumps(record, indent=1).encode())):
      tmp = f"{path}.{os.getpid()}.tmp"
      with open(tmp, "wb") as f:
        f.write(payload)
      os.replace(tmp, path)  # another process may have written the same bytes first
  return _read(where, config.gan.reference_model,
               catalog.dataset_info(config.dataset).num_classes)


@functools.lru_cache(maxsize=8)
def _read(where: str, model_name: str, num_classes: int) -> Reference:
  from cnnjax.models import get_model  # pylint: disable=g-import-not-at-top
  with open(os.path.join(where, "variables.msgpack"), "rb") as f:
    variables = serialization.msgpack_restore(f.read())
  with open(os.path.join(where, "reference.json")) as f:
    record = json.load(f)
  model = get_model(model_name, num_classes=num_classes, implementation="lax")
  return Reference(model=model, variables=jax.tree.map(jnp.asarray, variables),
                   test_accuracy=float(record["test_accuracy"]), directory=where)
