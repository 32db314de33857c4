"""Reading the digits of a scene left to right: ``T`` softmaxes over ``K`` symbols.

Goodfellow et al. (2014) read a number with one softmax per position plus a length
softmax. Here the end of the sequence is an **end class** instead of a length head:
each of the ``T = info.max_objects`` positions predicts one of ``K = num_classes + 1``
symbols, the digits and ``END`` (index ``num_classes``). The target of a scene with
``n`` digits is its digits, then ``END`` at position ``n`` (when ``n < T``); positions
after that are masked out of the loss. A prediction is read up to its first ``END``.

The model is a vector model with ``T * K`` outputs (`SequenceReading.output_size`, e.g.
``seq_reader``), read as ``[B, T, K]`` position-major: outputs ``t*K .. t*K + K - 1``
are position ``t``'s logits.

References:
  Goodfellow, Bulatov, Ibarz, Arnoud & Shet, "Multi-digit Number Recognition from Street
  View Imagery using Deep Convolutional Neural Networks", ICLR 2014.
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
from cnnjax.losses import _checks
from cnnjax.tasks.base import Batch, Task, TaskLoss

SEQUENCE_LOSSES = ("focal", "sequence_cross_entropy")


class SequenceReading(Task):
  """Batches ``{"image", "digits" [B, T] (left to right), "digit_mask" [B, T]}``.

  Losses: ``sequence_cross_entropy`` (cross-entropy per position, averaged over the
  example's unmasked positions: its digits and the ``END`` after them) and ``focal``
  (the same average of per-position focal losses). Metrics: ``sequence_accuracy``
  (headline: the whole reading is right, length included), ``digit_accuracy`` (of the
  true digits, the share read right at their position before the predicted end) and
  ``length_accuracy``. The report shows test images with their true and read digits.

  Example:
    >>> from cnnjax.data import catalog
    >>> task = SequenceReading(catalog.dataset_info("digit_scenes"))
    >>> task.output_size, task.end
    (33, 10)
    >>> batch = {"digits": jnp.array([[4, 2, 0]]), "digit_mask": jnp.array([[1, 1, 0]])}
    >>> task.targets(batch)  # symbols, and which positions the loss sees
    (Array([[ 4,  2, 10]], dtype=int32), Array([[ True,  True,  True]], dtype=bool))
  """

  name = "sequence"
  batch_fields = ("digits", "digit_mask")
  train_metric_names = ("sequence_accuracy",)
  headline = "sequence_accuracy"
  headline_goal = "max"
  image_only_augmentation = False
  report_examples = 16

  @property
  def length(self) -> int:
    return self.info.max_objects

  @property
  def end(self) -> int:
    """The index of the end symbol (after the digit classes)."""
    return self.info.num_classes

  @property
  def output_size(self) -> int:
    return self.length * (self.info.num_classes + 1)

  def loss_names(self) -> list[str]:
    return list(SEQUENCE_LOSSES)

  def logits(self, outputs: jax.Array) -> jax.Array:
    """``[B, T, K]`` logits from the model's ``[B, T * K]`` outputs."""
    return outputs.reshape(outputs.shape[0], self.length, self.info.num_classes + 1)

  def targets(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """``(symbols [B, T], loss mask [B, T])``: digits then END; positions <= length."""
    present = batch["digit_mask"] > 0
    symbols = jnp.where(present, batch["digits"].astype(jnp.int32), self.end)
    n = jnp.sum(present, axis=1, keepdims=True)
    return symbols, jnp.arange(self.length)[None, :] <= n

  def make_loss(self, loss_config: ml_collections.ConfigDict) -> TaskLoss:
    canonical = losses_lib.canonical_name(loss_config.name)
    if canonical not in SEQUENCE_LOSSES:
      raise ValueError(f"loss.name={loss_config.name!r} does not fit task 'sequence' (one "
                       f"softmax per position); use one of {sorted(SEQUENCE_LOSSES)}")
    opts = losses_lib.checked_options(canonical, config_lib.loss_options(loss_config))
    k = self.info.num_classes + 1

    def loss_fn(outputs: jax.Array, batch: Batch) -> jax.Array:
      logits, (symbols, mask) = self.logits(outputs), self.targets(batch)
      if canonical == "sequence_cross_entropy":
        return losses_lib.sequence_cross_entropy(logits, symbols, mask=mask, **opts)
      b = logits.shape[0]
      steps = losses_lib.focal(logits.reshape(-1, k), jax.nn.one_hot(symbols.reshape(-1), k),
                               **opts).reshape(b, -1)
      return _checks.masked_mean_per_example(steps, mask)

    loss_fn.__name__ = canonical
    jax.eval_shape(loss_fn, jax.ShapeDtypeStruct((2, self.output_size), jnp.float32),
                   {"digits": jax.ShapeDtypeStruct((2, self.length), jnp.int32),
                    "digit_mask": jax.ShapeDtypeStruct((2, self.length), jnp.uint8)})
    return loss_fn

  def _read(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Per example: whole reading right, digits right, digits present, length right."""
    predicted = jnp.argmax(self.logits(outputs), -1)
    symbols, mask = self.targets(batch)
    before_end = jnp.cumprod(predicted != self.end, axis=1).astype(bool)
    present = batch["digit_mask"] > 0
    length = jnp.sum(before_end, axis=1)
    return {"sequence": jnp.all((predicted == symbols) | ~mask, axis=1),
            "digits": jnp.sum(present & before_end & (predicted == symbols), axis=1),
            "present": jnp.sum(present, axis=1), "length": length == jnp.sum(present, axis=1)}

  def train_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    return {"sequence_accuracy": jnp.mean(self._read(outputs, batch)["sequence"])}

  def eval_sums(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    read, mask = self._read(outputs, batch), batch["mask"]
    return {f"{k}_sum": jnp.sum(mask * v) for k, v in read.items()}

  def finalize(self, sums: Mapping[str, Any],
               validation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    final = super().finalize(sums, validation)
    value = lambda key: float(np.asarray(sums[key]))
    ratio = lambda a, b: a / b if b else float("nan")
    final.update(sequence_accuracy=ratio(value("sequence_sum"), final["count"]),
                 digit_accuracy=ratio(value("digits_sum"), value("present_sum")),
                 length_accuracy=ratio(value("length_sum"), final["count"]))
    return final

  def readings(self, outputs: np.ndarray) -> list[list[int]]:
    """The digits each output reads, up to its first END."""
    read = []
    for row in np.asarray(self.logits(jnp.asarray(outputs))).argmax(-1):
      ends = np.nonzero(row == self.end)[0]
      read.append(row[:ends[0] if len(ends) else len(row)].tolist())
    return read

  def report(self, directory: str, final: Mapping[str, Any], title: str,
             examples: Mapping[str, np.ndarray] | None = None) -> list[str]:
    if examples is None:
      return []
    from cnnjax.reporting import scene_plots  # pylint: disable=g-import-not-at-top
    truth = [d[m > 0].tolist() for d, m in zip(examples["digits"], examples["digit_mask"])]
    scene_plots.plot_readings(examples["image"], truth, self.readings(examples["outputs"]),
                              os.path.join(directory, "readings.png"),
                              f"{title} test: sequence accuracy "
                              f"{final['sequence_accuracy']:.4f}")
    return ["readings.png"]
