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
  confusion matrix) once, at the end; given the finalized ``validation`` result of the
  same state, it may also report post-hoc calibrated numbers fitted there (temperature
  scaling). `details(final)` gives its non-scalar parts as JSON (for studies).
* **Data**: a task built with the run's ``data`` and ``config`` may read statistics of
  the training split (class counts for losses that need them) and give per-example
  training weights (`train_weights`, e.g. deferred re-weighting).
* **Headline**: `headline` (a key of `finalize`'s scalars) and `headline_goal`
  (``"max"`` or ``"min"``) pick the "best" checkpoint, what progress shows and how
  studies rank.
* **Report**: `report(directory, final, title, examples)` writes the task's own plots of the test
  evaluation (``examples``: the first `report_examples` test examples, every field, with
  the model's ``outputs`` for them), `epoch_report(directory, epoch, final)` after each validation;
  `summary_rows(summary)` adds lines to the results table; `curve_metrics` names the
  panels of the learning curves. With `evaluate_at_start` the trainer also evaluates
  the initial state on the test split (reported as ``start_test_<metric>``).
* **Assembly**: `cnnjax.training.build.build_run` asks the task for the pieces of a run:
  `prepare(data)` (the dataset as the task's steps see it), `make_model`,
  `make_optimizer`, `make_initializer`, `train_step`, `eval_step` and
  `with_learning_rate_scale`. The defaults build one model trained by one optimizer with
  the steps of `cnnjax.training.steps`; a task with other needs (two networks, extra
  batch rows) overrides them. `model_names` and `check_config` say which
  ``config.model`` values and task settings are accepted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

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
  evaluate_at_start: ClassVar[bool] = False  # also evaluate the initial state on test
  model_output: ClassVar[str] = "vector"  # "vector" [B, output_size] or "per_pixel"
  image_only_augmentation: ClassVar[bool] = True  # image-only augmentation is sound
  report_examples: ClassVar[int] = 0  # test examples (with outputs) `report` receives

  def __init__(self, info, *, data=None, config: ml_collections.ConfigDict | None = None):
    self.info = info
    self.data = data
    self.config = config

  def goal_of(self, metric: str) -> str:
    """``"min"`` or ``"max"``: the direction in which ``metric`` improves."""
    if metric == self.headline:
      return self.headline_goal
    return "min" if metric in self.lower_is_better else "max"

  # -- assembly (called by cnnjax.training.build.build_run) --------------------

  @classmethod
  def model_names(cls) -> list[str]:
    """The ``config.model`` values this task accepts (default: `cnnjax.models.MODELS`)."""
    from cnnjax import models  # pylint: disable=g-import-not-at-top
    return models.model_names()

  def check_config(self, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError (one line) for settings this task cannot train with."""
    del config

  def prepare(self, data):
    """The dataset as this task's steps see it (default: ``data`` itself).

    Must return ``data`` unchanged when it is already this task's view, since a study
    group passes one run's data to the next.
    """
    return data

  def make_model(self, config: ml_collections.ConfigDict, **fields) -> nn.Module:
    """The module trained, with ``fields`` (implementation, BatchNorm options) set."""
    from cnnjax import models  # pylint: disable=g-import-not-at-top
    return models.get_model(config.model, num_classes=self.output_size, dtype=config.dtype,
                            dropout_rate=config.dropout_rate, **fields)

  # Whether runs of this task may share one compiled step across optimizers
  # (`cnnjax.optimizers.switched` over the default `make_optimizer` chains). A task that
  # overrides `make_optimizer` must set it False: `build_run` decides from the config alone
  # (`optimizers.per_coordinate`) whether the chains may run on one raveled vector.
  optimizer_as_value = True

  def make_optimizer(self, config: ml_collections.ConfigDict,
                     total_steps: int) -> optax.GradientTransformation:
    """The optax chain of ``config.optimizer`` for a rate of 1 (the rate lives in the state)."""
    from cnnjax import optimizers  # pylint: disable=g-import-not-at-top
    return optimizers.make_optimizer(unit_rate(config.optimizer), total_steps)

  def make_initializer(self, model: nn.Module, tx: optax.GradientTransformation,
                       config: ml_collections.ConfigDict, total_steps: int) -> Callable:
    """``init(key, learning_rate) -> state`` (`cnnjax.training.state.make_initializer`)."""
    del total_steps
    from cnnjax.training import state  # pylint: disable=g-import-not-at-top
    return state.make_initializer(model, tx, self.info.image_shape,
                                  ema_decay=config.optimizer.ema_decay)

  def train_step(self, run, loss_fn: TaskLoss) -> Callable:
    """The pure ``(state, batch, rng, *, axis_name=None) -> (state, metrics)`` of ``run``."""
    from cnnjax.training import steps  # pylint: disable=g-import-not-at-top
    return functools.partial(
        steps.train_step, task=self, loss_fn=loss_fn, augment_fn=run.augment_fn,
        microbatches=run.microbatches, skip_nonfinite=run.config.on_nonfinite == "skip")

  def eval_step(self, run, loss_fn: TaskLoss) -> Callable:
    """The pure ``(state, batch, *, axis_name=None) -> sums`` of ``run``."""
    from cnnjax.training import steps  # pylint: disable=g-import-not-at-top
    return functools.partial(steps.eval_step, task=self, loss_fn=loss_fn,
                             apply_fn=run.eval_model.apply)

  def with_learning_rate_scale(self, run, state, factor: float):
    """``state`` training at ``factor`` times ``run``'s configured rate (a rollback)."""
    from cnnjax import optimizers  # pylint: disable=g-import-not-at-top
    return state.replace(opt_state=optimizers.set_learning_rate_scale(
        state.opt_state, run.learning_rate * factor))

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

  def report(self, directory: str, final: Mapping[str, Any], title: str,
             examples: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """Writes the task's plots of a test evaluation into ``directory``; returns file names.

    ``examples``: the first `report_examples` test examples (every field, ``image``
    in [0, 1]) with the model's ``outputs`` for them; None when not asked for.
    """
    del directory, final, title, examples
    return []

  def epoch_report(self, directory: str, epoch: int, final: Mapping[str, Any]) -> list[str]:
    """Writes the task's plots of the validation evaluation after ``epoch``; returns names."""
    del directory, epoch, final
    return []

  @property
  def curve_metrics(self) -> tuple[str, ...]:
    """The metrics of the learning-curve panels (train and validation per epoch)."""
    return ("loss", self.headline)

  def summary_rows(self, summary: Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    """Extra (name, value) rows for the results table of a finished run."""
    del summary
    return ()


def unit_rate(optimizer_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of an optimizer section with ``learning_rate = 1`` (see `cnnjax.training.build`)."""
  section = ml_collections.ConfigDict(optimizer_config.to_dict())
  section.learning_rate = 1.0
  return section


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
