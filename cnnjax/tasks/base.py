"""What the trainer asks of a task: the `Task` base class.

A task is a small object of pure functions (the shape of scenic's
``BaseModel.loss_function`` / ``get_metrics_fn``): the steps, the loop and the
study call these and never look at a label themselves.

* **Batch**: `batch_fields` names what a training batch holds besides ``image``;
  evaluation batches also hold ``mask`` (1 = a real example, 0 = padding).
* **Head**: `output_size` is the width of the model's last layer; `model_output` says
  whether the task reads one vector per image (``"vector"``) or one per pixel
  (``"per_pixel"``): `cnnjax.config.validate` refuses a model of the other kind.
* **Augmentation**: `image_only_augmentation` says whether the image-only
  augmentations of `cnnjax.data.augment` are sound for the task (they are not when
  masks or boxes would have to move with the image).
* **Loss**: `make_loss(loss_config)` returns ``loss_fn(outputs, batch) -> [B]``, one
  value per example; the train step takes the plain mean.
* **Training metrics**: `train_metrics(outputs, batch)` gives batch means (scalars)
  reported beside the loss.
* **Evaluation**: `eval_sums(outputs, batch)` gives sums over the masked-in examples
  of one batch (a pytree of arrays), so batches, devices and hosts merge by
  addition; the step adds ``loss_sum`` and ``count`` itself. `finalize(sums)` turns
  the merged sums into the reported numbers (scalars, plus arrays such as a
  confusion matrix) once, at the end.
* **Headline**: `headline` (a key of `finalize`'s scalars) and `headline_goal`
  (``"max"`` or ``"min"``) pick the "best" checkpoint, what progress shows and how
  studies rank.
* **Report**: `report(directory, final, title, examples)` writes the task's own plots;
  ``examples`` holds the first `report_examples` test examples (every field) and the
  model's ``outputs`` for them. `summary_rows(summary)` adds lines to the results table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

Batch = Mapping[str, jax.Array]
TaskLoss = Callable[[jax.Array, Batch], jax.Array]  # (outputs, batch) -> [B]


class Task:
  """Base class of every task; subclasses set the class attributes and override methods.

  Args:
    info: the dataset's `cnnjax.data.DatasetInfo`.
  """

  name: ClassVar[str] = ""
  batch_fields: ClassVar[tuple[str, ...]] = ()
  train_metric_names: ClassVar[tuple[str, ...]] = ()  # the keys of `train_metrics`
  headline: ClassVar[str] = ""
  headline_goal: ClassVar[str] = "max"
  headline_percent: ClassVar[bool] = True  # a fraction reports show in percent
  model_output: ClassVar[str] = "vector"  # "vector" [B, output_size] or "per_pixel"
  image_only_augmentation: ClassVar[bool] = True  # image-only augmentation is sound
  report_examples: ClassVar[int] = 0  # test examples (with outputs) `report` receives

  def __init__(self, info):
    self.info = info

  # -- model and loss ---------------------------------------------------------

  @property
  def output_size(self) -> int:
    raise NotImplementedError

  def loss_names(self) -> list[str]:
    """The loss names this task can train with (for messages and docs)."""
    raise NotImplementedError

  def make_loss(self, loss_config: ml_collections.ConfigDict) -> TaskLoss:
    """``loss_fn(outputs, batch) -> [B]`` from a ``loss`` config section.

    Raises:
      ValueError: a loss that does not fit the task, or an option it does not take.
    """
    raise NotImplementedError

  def check_loss(self, loss_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError unless `make_loss` accepts ``loss_config`` (nothing is compiled)."""
    self.make_loss(loss_config)

  # -- metrics ----------------------------------------------------------------

  def train_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Scalar means over one training batch (besides the loss)."""
    del outputs, batch
    return {}

  def eval_sums(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Sums over the masked-in examples of one evaluation batch."""
    del outputs, batch
    return {}

  def finalize(self, sums: Mapping[str, Any]) -> dict[str, Any]:
    """Reported numbers from summed evaluation statistics (host numpy).

    The base computes ``loss`` (mean per-example loss) and ``count``; subclasses
    add theirs.
    """
    count = float(np.asarray(sums["count"]))
    return {"loss": float(np.asarray(sums["loss_sum"])) / count if count else float("nan"),
            "count": int(count)}

  def scalars(self, final: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a `finalize` result except ``count`` (for history and logs)."""
    return {k: v for k, v in final.items()
            if k != "count" and isinstance(v, (int, float)) and not isinstance(v, bool)}

  # -- report -----------------------------------------------------------------

  def report(self, directory: str, final: Mapping[str, Any], title: str,
             examples: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """Writes the task's plots of a test evaluation into ``directory``; returns file names.

    ``examples``: the first `report_examples` test examples (every field, ``image``
    in [0, 1]) with the model's ``outputs`` for them; None when not asked for.
    """
    del directory, final, title, examples
    return []

  def summary_rows(self, summary: Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    """Extra (name, value) rows for the results table of a finished run."""
    del summary
    return ()


def confusion_matrix(labels: jax.Array, predictions: jax.Array, weights: jax.Array,
                     num_classes: int) -> jax.Array:
  """``[C, C]`` sum of ``weights`` per (true label, prediction) pair (rows: true label).

  ``labels``, ``predictions`` and ``weights`` share their shape (any); a label outside
  ``[0, C)`` matches no row, so it counts nowhere.

  Examples:
    >>> confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 0, 1]), jnp.ones(3), 2)
    Array([[1., 0.],
           [1., 1.]], dtype=float32)
  """
  true = jax.nn.one_hot(labels.reshape(-1), num_classes) * weights.reshape(-1, 1)
  return jnp.einsum("ni,nj->ij", true, jax.nn.one_hot(predictions.reshape(-1), num_classes))


def masked_sum(values: jax.Array, mask: jax.Array) -> jax.Array:
  """``sum(values * mask)`` over the batch axis, with masked-out entries exactly ignored.

  ``where`` instead of a product, so a NaN or inf in a padded example cannot leak
  into the sum.

  Examples:
    >>> float(masked_sum(jnp.array([1.0, jnp.nan, 2.0]), jnp.array([1.0, 0.0, 1.0])))
    3.0
  """
  mask = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
  return jnp.sum(jnp.where(mask > 0, values, 0), axis=0)
