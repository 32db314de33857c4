"""Semantic segmentation: a class per pixel, per-pixel logits ``[B, H, W, C]``.

The model must be a per-pixel one (``output_kind == "per_pixel"``: ``unet_small``,
``fcn``); its ``num_classes`` is `Segmentation.output_size`, the dataset's classes plus
background (11 for the digit scenes: 0 = background, ``1 + d`` = digit ``d``).
"""

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


def class_names(num_classes: int) -> list[str]:
  """``["background", "digit0", ...]``: the pixel classes of a scene dataset."""
  return ["background"] + [f"digit{d}" for d in range(num_classes - 1)]


def overlap_scores(confusion: np.ndarray) -> dict[str, Any]:
  """Per-class IoU and Dice, their means, and pixel accuracy from a ``[C, C]`` confusion.

  ``IoU_c = TP / (TP + FP + FN)``, ``Dice_c = 2 TP / (2 TP + FP + FN)``; a class absent
  from both labels and predictions (no union) is NaN and left out of the means.

  Examples:
    >>> s = overlap_scores(np.array([[3.0, 1.0], [0.0, 2.0]]))
    >>> s["per_class_iou"].round(4).tolist(), round(s["pixel_accuracy"], 4)
    ([0.75, 0.6667], 0.8333)
  """
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    dice = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
  total = confusion.sum()
  nan_mean = lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
  return {"mean_iou": nan_mean(iou), "mean_dice": nan_mean(dice), "per_class_iou": iou,
          "pixel_accuracy": float(tp.sum() / total) if total else float("nan")}


class Segmentation(Task):
  """Batches ``{"image", "segmentation" [B, H, W] integer classes}``; dense losses.

  Losses (`cnnjax.losses.for_segmentation`, pixels reduced inside, ``ignore_index``
  honoured): ``sparse_categorical_cross_entropy``, ``focal``, ``dice``, ``tversky``,
  ``dice_cross_entropy``. Metrics count pixels whose label is a class (in ``[0, C)``):
  evaluation sums the ``[C, C]`` pixel ``confusion`` matrix, from which `finalize`
  reports ``mean_iou`` (headline, higher is better), ``iou_<class>`` per class,
  ``mean_dice`` and ``pixel_accuracy``. The report plots test images with their true
  and predicted masks.

  Example:
    >>> from cnnjax.data import catalog
    >>> task = Segmentation(catalog.dataset_info("digit_scenes"))
    >>> task.output_size
    11
    >>> labels = jnp.array([[[0, 3]]])                      # one example, 1x2 pixels
    >>> logits = jax.nn.one_hot(jnp.array([[[0, 0]]]), 11)  # predicts background twice
    >>> final = task.finalize({"loss_sum": 0.0, "count": 1.0, **task.eval_sums(
    ...     logits, {"segmentation": labels, "mask": jnp.ones(1)})})
    >>> final["pixel_accuracy"], final["mean_iou"]
    (0.5, 0.25)
  """

  name = "segmentation"
  batch_fields = ("segmentation",)
  train_metric_names = ("pixel_accuracy",)
  headline = "mean_iou"
  headline_goal = "max"
  headline_percent = False
  model_output = "per_pixel"
  image_only_augmentation = False
  report_examples = 8

  @property
  def output_size(self) -> int:
    return self.info.num_classes + 1

  def loss_names(self) -> list[str]:
    return losses_lib.segmentation_names()

  def make_loss(self, loss_config: ml_collections.ConfigDict) -> TaskLoss:
    per_example = losses_lib.for_segmentation(
        loss_config.name, num_classes=self.output_size, **config_lib.loss_options(loss_config))

    def loss_fn(outputs: jax.Array, batch: Batch) -> jax.Array:
      return per_example(outputs, batch["segmentation"].astype(jnp.int32))

    loss_fn.__name__ = per_example.__name__
    return loss_fn

  def _labels(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
    labels = batch["segmentation"].astype(jnp.int32)
    return labels, (labels >= 0) & (labels < self.output_size)

  def train_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    labels, valid = self._labels(batch)
    hits = jnp.sum(valid & (jnp.argmax(outputs, -1) == labels))
    return {"pixel_accuracy": hits / jnp.maximum(jnp.sum(valid), 1)}

  def eval_sums(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    labels, valid = self._labels(batch)
    weights = valid * batch["mask"].reshape((-1,) + (1,) * (labels.ndim - 1))
    return {"confusion": confusion_matrix(labels, jnp.argmax(outputs, -1), weights,
                                          self.output_size)}

  def finalize(self, sums: Mapping[str, Any],
               validation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    final = super().finalize(sums, validation)
    confusion = np.asarray(sums["confusion"])
    scores = overlap_scores(confusion)
    final.update({k: scores[k] for k in ("mean_iou", "mean_dice", "pixel_accuracy")})
    for name, value in zip(class_names(self.output_size), scores["per_class_iou"]):
      final[f"iou_{name}"] = float(value)
    final["confusion"] = confusion
    return final

  def report(self, directory: str, final: Mapping[str, Any], title: str,
             examples: Mapping[str, np.ndarray] | None = None) -> list[str]:
    if examples is None:
      return []
    from cnnjax.reporting import scene_plots  # pylint: disable=g-import-not-at-top
    scene_plots.plot_masks(examples["image"], examples["segmentation"],
                           np.argmax(examples["outputs"], -1), self.output_size,
                           os.path.join(directory, "segmentation.png"),
                           f"{title} test: mean IoU {final['mean_iou']:.4f}")
    return ["segmentation.png"]
