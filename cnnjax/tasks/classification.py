"""Image classification: one integer label per image, logits ``[B, num_classes]``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnjax import config as config_lib
from cnnjax import losses as losses_lib
from cnnjax.tasks.base import Batch, Task, TaskLoss, confusion_matrix


class Classification(Task):
  """Batches ``{"image", "label"}``; any loss of `cnnjax.losses.classification_names`.

  Evaluation sums ``correct`` and the ``confusion`` matrix ``[C, C]`` (rows: true
  label, columns: prediction); `finalize` reports ``loss``, ``accuracy``, ``count`` and
  ``confusion``. Headline: accuracy (higher is better).

  Example:
    >>> from cnnjax.data import catalog
    >>> task = Classification(catalog.dataset_info("digits"))
    >>> task.output_size
    10
    >>> logits = jnp.eye(3, 10) * 5
    >>> batch = {"label": jnp.array([0, 1, 0]), "mask": jnp.array([1.0, 1.0, 0.0])}
    >>> sums = task.eval_sums(logits, batch)
    >>> float(sums["correct"])
    2.0
  """

  name = "classification"
  batch_fields = ("label",)
  train_metric_names = ("accuracy",)
  headline = "accuracy"
  headline_goal = "max"

  @property
  def output_size(self) -> int:
    return self.info.num_classes

  def loss_names(self) -> list[str]:
    return losses_lib.classification_names()

  def make_loss(self, loss_config: ml_collections.ConfigDict) -> TaskLoss:
    per_example = losses_lib.for_classification(
        loss_config.name, num_classes=self.info.num_classes,
        **config_lib.loss_options(loss_config))

    def loss_fn(outputs: jax.Array, batch: Batch) -> jax.Array:
      return per_example(outputs, batch["label"])

    loss_fn.__name__ = per_example.__name__
    return loss_fn

  def train_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    return {"accuracy": jnp.mean(jnp.argmax(outputs, -1) == batch["label"])}

  def eval_sums(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    labels, mask = batch["label"], batch["mask"]
    predictions = jnp.argmax(outputs, -1)
    confusion = confusion_matrix(labels, predictions, mask, self.info.num_classes)
    return {"correct": jnp.sum(mask * (predictions == labels)), "confusion": confusion}

  def finalize(self, sums: Mapping[str, Any]) -> dict[str, Any]:
    final = super().finalize(sums)
    count = final["count"]
    final["accuracy"] = float(np.asarray(sums["correct"])) / count if count else float("nan")
    final["confusion"] = np.asarray(sums["confusion"])
    return final

  def report(self, directory: str, final: Mapping[str, Any], title: str,
             examples: Mapping[str, np.ndarray] | None = None) -> list[str]:
    del examples
    from cnnjax.reporting import plots  # pylint: disable=g-import-not-at-top
    plots.plot_confusion_matrix(final["confusion"], os.path.join(directory, "confusion_matrix.png"),
                                f"{title} test: accuracy {final['accuracy']:.4f}")
    return ["confusion_matrix.png"]
