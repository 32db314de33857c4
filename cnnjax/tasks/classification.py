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
from cnnjax import metrics as metrics_lib
from cnnjax.tasks.base import Batch, Task, TaskLoss, confusion_matrix


class Classification(Task):
  """Batches ``{"image", "label"}`` (training batches may add ``weight``); any loss of
  `cnnjax.losses.classification_names`.

  Evaluation sums ``correct``, the ``confusion`` matrix ``[C, C]`` (rows: true label,
  columns: prediction) and the calibration statistics of `cnnjax.metrics.calibration_sums`
  (every temperature of `cnnjax.metrics.TEMPERATURES`). `finalize` reports ``loss``,
  ``accuracy``, ``balanced_accuracy``, ``per_class_accuracy``, ``nll``, ``brier``,
  ``ece``, ``adaptive_ece``, ``classwise_ece``, the ``temperature`` fitted by NLL on the
  validation split and the same five calibration metrics after temperature scaling
  (``ts_nll``, ...), reliability bins before and after, and for imbalanced data
  ``many_shot_accuracy``, ``medium_shot_accuracy``, ``few_shot_accuracy``: the mean
  per-class accuracy over the classes with more than ``class_imbalance.many_shot_above``
  training examples, at most that and at least ``few_shot_below``, and fewer than
  ``few_shot_below`` (Liu et al. 2019's bands: > 100, 20-100, < 20). Headline: accuracy.

  Built with the run's ``data``, the class counts of its training split fill the
  ``class_counts`` / ``class_priors`` options of the losses that take them (unless the
  config sets them), and ``config.reweighting`` gives per-example training weights.

  Example:
    >>> from cnnjax.data import catalog
    >>> task = Classification(catalog.dataset_info("digits"))
    >>> task.output_size
    10
    >>> logits = jnp.eye(3, 10) * 5
    >>> batch = {"label": jnp.array([0, 1, 0]), "mask": jnp.array([1.0, 1.0, 0.0])}
    >>> sums = jax.jit(task.eval_sums)(logits, batch)
    >>> float(sums["correct"])
    2.0
  """

  name = "classification"
  batch_fields = ("label",)
  train_metric_names = ("accuracy",)
  headline = "accuracy"
  headline_goal = "max"
  lower_is_better = ("loss", "nll", "brier", "ece", "adaptive_ece", "classwise_ece",
                     "ts_nll", "ts_brier", "ts_ece", "ts_adaptive_ece", "ts_classwise_ece")

  def __init__(self, info, *, data=None, config: ml_collections.ConfigDict | None = None):
    super().__init__(info, data=data, config=config)
    self.class_counts = None if data is None else np.asarray(data.class_counts("train"))

  @property
  def output_size(self) -> int:
    return self.info.num_classes

  def loss_names(self) -> list[str]:
    return losses_lib.classification_names()

  def _class_statistics(self) -> dict[str, tuple]:
    # Without data (checking a config) uniform stand-ins: the option's shape is what counts.
    # A class absent from the training split counts as 1 (a margin or log-prior needs n > 0).
    counts = (np.ones(self.info.num_classes) if self.class_counts is None
              else np.maximum(self.class_counts, 1))
    return {"class_counts": tuple(int(n) for n in counts),
            "class_priors": tuple(float(n) for n in counts / counts.sum())}

  def make_loss(self, loss_config: ml_collections.ConfigDict) -> TaskLoss:
    options = config_lib.loss_options(loss_config)
    canonical = losses_lib.canonical_name(loss_config.name)
    if canonical in losses_lib.classification_names():
      takes = losses_lib.options_of(canonical)
      for key, value in self._class_statistics().items():
        if key in takes and key not in options:
          options[key] = value
    per_example = losses_lib.for_classification(
        loss_config.name, num_classes=self.info.num_classes, **options)

    def loss_fn(outputs: jax.Array, batch: Batch) -> jax.Array:
      loss = per_example(outputs, batch["label"])
      # Training batches of a re-weighted run carry per-example weights (`train_weights`).
      return loss * batch["weight"] if "weight" in batch else loss

    loss_fn.__name__ = per_example.__name__
    return loss_fn

  def train_weights(self, steps_per_epoch: int, total_steps: int):
    """Class-balanced weights of the training labels from ``reweighting.start_fraction``
    of training on (deferred re-weighting, Cao et al. 2019), else None."""
    section = None if self.config is None else self.config.reweighting
    if section is None or section.kind == "none" or self.data is None:
      return None
    labels = self.data.split_arrays("train", dtype=np.uint8)["label"]
    per_class = losses_lib.class_balanced_weights(np.maximum(self.class_counts, 1), section.beta)
    weights, ones = per_class[labels].astype(np.float32), np.ones(len(labels), np.float32)
    start = section.start_fraction * total_steps
    return lambda epoch: weights if epoch * steps_per_epoch >= start else ones

  def train_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    return {"accuracy": jnp.mean(jnp.argmax(outputs, -1) == batch["label"])}

  def eval_sums(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    labels, mask = batch["label"], batch["mask"]
    predictions = jnp.argmax(outputs, -1)
    confusion = confusion_matrix(labels, predictions, mask, self.info.num_classes)
    return {"correct": jnp.sum(mask * (predictions == labels)), "confusion": confusion,
            "calibration": metrics_lib.calibration_sums(outputs, labels, mask)}

  def _shot_bands(self) -> tuple[int, int] | None:
    section = None if self.config is None else self.config.class_imbalance
    if section is None or section.profile == "none" or self.class_counts is None:
      return None
    return section.many_shot_above, section.few_shot_below

  def _band_accuracies(self, per_class: np.ndarray) -> dict[str, float | None]:
    bands = self._shot_bands()
    if bands is None:
      return {}
    many, few = bands
    n = self.class_counts
    out = {}
    for name, members in (("many", n > many), ("medium", (n <= many) & (n >= few)),
                          ("few", n < few)):
      values = per_class[members & np.isfinite(per_class)]
      out[f"{name}_shot_accuracy"] = float(values.mean()) if values.size else None
    return out

  def finalize(self, sums: Mapping[str, Any],
               validation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    final = super().finalize(sums)
    count = final["count"]
    final["accuracy"] = float(np.asarray(sums["correct"])) / count if count else float("nan")
    final["confusion"] = np.asarray(sums["confusion"])
    per_class = metrics_lib.per_class_accuracy(final["confusion"])
    final["per_class_accuracy"] = per_class
    final["balanced_accuracy"] = metrics_lib.balanced_accuracy(final["confusion"])
    final.update(self._band_accuracies(per_class))
    calibration = jax.tree.map(np.asarray, dict(sums["calibration"]))
    final.update(metrics_lib.calibration_metrics(calibration))
    final["reliability"] = metrics_lib.reliability(calibration)
    # The validation split fits its own temperature; a held-out split uses validation's.
    temperature = (metrics_lib.fit_temperature(calibration) if validation is None
                   else validation.get("temperature"))
    if temperature is not None:
      index = metrics_lib.temperature_index(temperature)
      final["temperature"] = float(temperature)
      final.update({f"ts_{k}": v for k, v in
                    metrics_lib.calibration_metrics(calibration, index).items()})
      final["ts_reliability"] = metrics_lib.reliability(calibration, index)
    return final

  def details(self, final: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("per_class_accuracy", "confusion", "reliability", "ts_reliability")
    return {k: np.asarray(final[k]).tolist() if isinstance(final[k], np.ndarray) else final[k]
            for k in keep if k in final}

  def report(self, directory: str, final: Mapping[str, Any], title: str,
             examples: Mapping[str, np.ndarray] | None = None) -> list[str]:
    del examples
    from cnnjax.reporting import plots  # pylint: disable=g-import-not-at-top
    plots.plot_confusion_matrix(final["confusion"], os.path.join(directory, "confusion_matrix.png"),
                                f"{title} test: accuracy {final['accuracy']:.4f}")
    plots.plot_reliability(final, os.path.join(directory, "reliability.png"), f"{title} test")
    return ["confusion_matrix.png", "reliability.png"]

  def summary_rows(self, summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    rows = [("test balanced accuracy", summary.get("test_balanced_accuracy")),
            ("test ECE / NLL", _pair(summary, "test_ece", "test_nll"))]
    if summary.get("test_temperature") is not None:
      rows.append((f"after T={summary['test_temperature']:.3g} (val NLL)",
                   _pair(summary, "test_ts_ece", "test_ts_nll")))
    for band in ("many", "medium", "few"):
      if f"test_{band}_shot_accuracy" in summary:
        rows.append((f"test {band}-shot accuracy", summary[f"test_{band}_shot_accuracy"]))
    return rows


def _pair(summary: Mapping[str, Any], a: str, b: str) -> str:
  values = [summary.get(a), summary.get(b)]
  return " / ".join("n/a" if v is None else f"{v:.4f}" for v in values)
