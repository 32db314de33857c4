"""What the trainer asks of a task: the `Task` base class.

A task is a small object of pure functions (the shape of scenic's
``BaseModel.loss_function`` / ``get_metrics_fn``): the steps, the loop and the
study call these and never look at a label themselves.

* **Batch**: `batch_fields` names what a training batch holds besides ``image``;
  evaluation batches also hold ``mask`` (1 = a real example, 0 = padding).
* **Head**: `output_size` is the width of the model's last layer.
* **Loss**: `make_loss(loss_config)` returns ``loss_fn(outputs, batch) -> [B]``, one
  value per example; the train step takes the plain mean.
* **Training metrics**: `train_metrics(outputs, batch)` gives batch means (scalars)
  reported beside the loss.
* **Evaluation**: `eval_sums(outputs, batch)` gives sums over the masked-in examples
  of one batch (a pytree of arrays), so batches, devices and hosts merge by
  addition; the step adds ``loss_sum`` and ``count`` itself. `finalize(sums)` turns
  the merged sums into the reported numbers (scalars, plus arrays such as a
  confusion matrix) once, at the end; given the finalized ``validation`` result of the
  same state, it may also report post-hoc calibrated numbers fitted there (temperature
  scaling). `details(final)` gives its non-scalar parts as JSON (for studies).
* **Data**: a task built with the run's ``data`` and ``config`` may read statistics of
  the training split (class counts for losses that need them) and give per-example
  training weights (`train_weights`, e.g. deferred re-weighting).
* **Headline**: `headline` (a key of `finalize`'s scalars) and `headline_goal`
  (``"max"`` or ``"min"``) pick the "best" checkpoint, what progress shows and how
  studies rank.
* **Report**: `report(directory, final, title)` writes the task's own plots;
  `summary_rows(summary)` adds lines to the results table.
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
  lower_is_better: ClassVar[tuple[str, ...]] = ("loss",)  # metrics where less is better

  def __init__(self, info, *, data=None, config: ml_collections.ConfigDict | None = None):
    self.info = info
    self.data = data
    self.config = config

  def goal_of(self, metric: str) -> str:
    """``"min"`` or ``"max"``: the direction in which ``metric`` improves."""
    if metric == self.headline:
      return self.headline_goal
    return "min" if metric in self.lower_is_better else "max"

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

  def finalize(self, sums: Mapping[str, Any],
               validation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Reported numbers from summed evaluation statistics (host numpy).

    The base computes ``loss`` (mean per-example loss) and ``count``; subclasses
    add theirs. ``validation`` is the finalized validation result of the same state
    (None on the validation split itself, or when there is none).
    """
    del validation
    count = float(np.asarray(sums["count"]))
    return {"loss": float(np.asarray(sums["loss_sum"])) / count if count else float("nan"),
            "count": int(count)}

  def details(self, final: Mapping[str, Any]) -> dict[str, Any]:
    """The non-scalar parts of a `finalize` result worth keeping, as JSON types."""
    del final
    return {}

  def train_weights(self, steps_per_epoch: int, total_steps: int):
    """``epoch -> [n_train]`` weights of the training examples, or None (all weigh 1)."""
    del steps_per_epoch, total_steps
    return None

  def scalars(self, final: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a `finalize` result except ``count`` (for history and logs)."""
    return {k: v for k, v in final.items()
            if k != "count" and isinstance(v, (int, float)) and not isinstance(v, bool)}

  # -- report -----------------------------------------------------------------

  def report(self, directory: str, final: Mapping[str, Any], title: str) -> list[str]:
    """Writes the task's plots of a test evaluation into ``directory``; returns file names."""
    del directory, final, title
    return []

  def summary_rows(self, summary: Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    """Extra (name, value) rows for the results table of a finished run."""
    del summary
    return ()


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
