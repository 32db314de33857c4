"""Localization: one object per image, its box and its class, from one output vector.

The model is a vector model with ``4 + num_classes`` outputs (`Localization.
output_size`, e.g. ``loc_cnn``): the first 4 are the box and the rest the class
logits. The box outputs ``r`` give its centre and size as fractions of the image
through a sigmoid (DETR's parametrization): centre ``(sigmoid(r0) H, sigmoid(r1) W)``,
height ``sigmoid(r2) H``, width ``sigmoid(r3) W``. Zero outputs are the centred box of
half the image's height and width, and no output makes an empty box or one larger
than the image. Two other forms failed in measured runs: corners predicted directly
start as an empty box, where the IoU and GIoU losses have no gradient (mean IoU stayed
at 0.01 over 3 epochs); an unbounded centre and size let GIoU's vanishing gradient on
boxes much larger than the target walk them to hundreds of pixels (mean IoU 0.0002).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cnnjax import config as config_lib
from cnnjax import losses as losses_lib
from cnnjax.tasks.base import Batch, Task, TaskLoss

BOX_LOSSES = ("giou", "huber", "iou", "log_cosh", "mean_absolute_error",
              "mean_squared_error", "smooth_l1")
# The weight of the class cross-entropy next to the box loss when loss.class_loss_weight
# is unset.
DEFAULT_CLASS_LOSS_WEIGHT = 1.0


class Localization(Task):
  """Batches ``{"image", "box" [B, 4] (y0, x0, y1, x1) in pixels, "label" [B]}``.

  Loss: ``box_loss(box_pixels, box) + class_loss_weight * CE(class_logits, label)``,
  with ``loss.name`` one of `BOX_LOSSES` (the regression losses average the 4
  coordinates, in pixels, so ``huber``'s delta and ``smooth_l1``'s beta are pixels;
  ``iou`` and ``giou`` are unit-free) and ``loss.class_loss_weight`` (default
  `DEFAULT_CLASS_LOSS_WEIGHT`). Metrics: ``mean_iou`` (headline, higher is better),
  ``iou_50`` and ``iou_75`` (fractions of boxes with IoU >= 0.5, >= 0.75),
  ``class_accuracy``. The report draws true and predicted boxes on test images.

  Example:
    >>> from cnnjax.data import catalog
    >>> task = Localization(catalog.dataset_info("digit_scenes_single"))
    >>> task.output_size
    14
    >>> task.boxes(jnp.zeros((1, 14)))  # zero outputs: the centred box of half the size
    Array([[ 8., 12., 24., 36.]], dtype=float32)
  """

  name = "localization"
  batch_fields = ("box", "label")
  train_metric_names = ("mean_iou", "class_accuracy")
  headline = "mean_iou"
  headline_goal = "max"
  headline_percent = False
  image_only_augmentation = False
  report_examples = 16

  @property
  def output_size(self) -> int:
    return 4 + self.info.num_classes

  def loss_names(self) -> list[str]:
    return list(BOX_LOSSES)

  def boxes(self, outputs: jax.Array) -> jax.Array:
    """The predicted boxes ``(y0, x0, y1, x1)`` in pixels ``[B, 4]`` from outputs ``[B, 4 + C]``."""
    h, w = self.info.image_shape[:2]
    scale = jnp.asarray([h, w], outputs.dtype)
    fractions = jax.nn.sigmoid(outputs[:, :4])
    centre, size = fractions[:, :2] * scale, fractions[:, 2:] * scale
    return jnp.concatenate([centre - size / 2, centre + size / 2], axis=-1)

  def make_loss(self, loss_config: ml_collections.ConfigDict) -> TaskLoss:
    canonical = losses_lib.canonical_name(loss_config.name)
    if canonical not in BOX_LOSSES:
      raise ValueError(f"loss.name={loss_config.name!r} does not fit task 'localization' (a "
                       f"box loss, plus cross-entropy for the class); use one of "
                       f"{sorted(BOX_LOSSES)}")
    opts = losses_lib.checked_options(canonical, config_lib.loss_options(loss_config),
                                      extra=("class_loss_weight",))
    weight = opts.pop("class_loss_weight", DEFAULT_CLASS_LOSS_WEIGHT)
    if not weight >= 0:
      raise ValueError(f"loss.class_loss_weight={weight!r} is invalid; expected a weight >= 0")
    box_loss = losses_lib.get(canonical)

    def loss_fn(outputs: jax.Array, batch: Batch) -> jax.Array:
      ce = optax.losses.softmax_cross_entropy_with_integer_labels(outputs[:, 4:], batch["label"])
      return box_loss(self.boxes(outputs), batch["box"], **opts) + weight * ce

    loss_fn.__name__ = f"{canonical}_plus_class_ce"
    jax.eval_shape(loss_fn, jax.ShapeDtypeStruct((2, self.output_size), jnp.float32),
                   {"box": jax.ShapeDtypeStruct((2, 4), jnp.float32),
                    "label": jax.ShapeDtypeStruct((2,), jnp.int32)})
    return loss_fn

  def _scores(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    overlap = losses_lib.box_iou(self.boxes(outputs), batch["box"])
    return overlap, jnp.argmax(outputs[:, 4:], -1) == batch["label"]

  def train_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    overlap, correct = self._scores(outputs, batch)
    return {"mean_iou": jnp.mean(overlap), "class_accuracy": jnp.mean(correct)}

  def eval_sums(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    overlap, correct = self._scores(outputs, batch)
    mask = batch["mask"]
    return {"iou_sum": jnp.sum(mask * overlap), "iou_50": jnp.sum(mask * (overlap >= 0.5)),
            "iou_75": jnp.sum(mask * (overlap >= 0.75)), "correct": jnp.sum(mask * correct)}

  def finalize(self, sums: Mapping[str, Any],
               validation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    final = super().finalize(sums, validation)
    count = final["count"]
    share = lambda key: float(np.asarray(sums[key])) / count if count else float("nan")
    final.update(mean_iou=share("iou_sum"), iou_50=share("iou_50"), iou_75=share("iou_75"),
                 class_accuracy=share("correct"))
    return final

  def report(self, directory: str, final: Mapping[str, Any], title: str,
             examples: Mapping[str, np.ndarray] | None = None) -> list[str]:
    if examples is None:
      return []
    from cnnjax.reporting import scene_plots  # pylint: disable=g-import-not-at-top
    outputs = examples["outputs"]
    scene_plots.plot_boxes(examples["image"], examples["box"], examples["label"],
                           np.asarray(self.boxes(jnp.asarray(outputs))), outputs[:, 4:].argmax(-1),
                           os.path.join(directory, "boxes.png"),
                           f"{title} test: mean IoU {final['mean_iou']:.4f}, class accuracy "
                           f"{final['class_accuracy']:.4f}")
    return ["boxes.png"]
