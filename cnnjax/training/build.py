"""`build_run`: the one place a run is assembled from its config.

Data, task, model, loss, optimizer, initial state, step functions and the budget
all come from here; `cnnjax.training.loop.train_and_evaluate` compiles and drives
one `Run`, and a study group (`cnnjax.study.vmapped`) stacks the `Run`s of its
configs and vectorises the same step functions. Nothing here compiles a step or
writes a file.

The learning rate is carried in the optimizer state (the schedule is built for a
rate of 1 and the state's run-time scale is the configured rate), so runs that
differ only in learning rate have the same update function: one compiled step can
train any of them, alone or stacked. For the constant and cosine schedules
``schedule_1(t) * lr`` is the same float32 product as ``schedule_lr(t)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from cnnjax import optimizers
from cnnjax import tasks as tasks_lib
from cnnjax.data import augment as augment_lib
from cnnjax.models import fast_ops, get_model, has_batch_norm
from cnnjax.training import state as state_lib
from cnnjax.training import steps


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything one run needs, built from its config; pure pieces, nothing compiled.

  Attributes:
    config: the (validated) run config.
    data: the `cnnjax.data.Dataset`, ordered by ``config.seed``.
    task: the `cnnjax.tasks.Task`.
    model: the module trained (its ``implementation`` resolved for training).
    eval_model: the same module with the forward-only formulation (same parameters).
    unit_rate_tx: the optax chain with its schedule built for a rate of 1; the run's rate is
      the run-time scale in the optimizer state (``initializer(key, learning_rate)``
      sets it). ``unit_rate_tx.init`` alone would train at a rate of 1.
    loss_fn: ``(outputs, batch) -> [B]``.
    initializer: ``key -> TrainState`` (shared by the runs of a study group).
    state: the initial `TrainState`.
    train_rng: the root key of the training steps.
    learning_rate: the configured rate (the optimizer's default when unset).
    total_steps, steps_per_epoch: the budget.
    microbatches: parts each step splits its per-device batch into.
    augment_fn: per-example image augmentation, or None.
  """
  config: ml_collections.ConfigDict
  data: Any
  task: tasks_lib.Task
  model: nn.Module
  eval_model: nn.Module
  unit_rate_tx: optax.GradientTransformation
  loss_fn: tasks_lib.TaskLoss
  initializer: Callable[[jax.Array], state_lib.TrainState]
  state: state_lib.TrainState
  train_rng: jax.Array
  learning_rate: float
  total_steps: int
  steps_per_epoch: int
  microbatches: int
  augment_fn: Callable | None

  @property
  def num_epochs(self) -> int:
    return math.ceil(self.total_steps / self.steps_per_epoch)

  @property
  def num_params(self) -> int:
    return state_lib.num_params(self.state.params)

  def train_step(self, loss_fn: tasks_lib.TaskLoss | None = None) -> Callable:
    """The pure ``(state, batch, rng, *, axis_name=None) -> (state, metrics)`` of this run."""
    return functools.partial(
        steps.train_step, task=self.task, loss_fn=loss_fn or self.loss_fn,
        augment_fn=self.augment_fn, microbatches=self.microbatches,
        skip_nonfinite=self.config.on_nonfinite == "skip")

  def eval_step(self, loss_fn: tasks_lib.TaskLoss | None = None) -> Callable:
    """The pure ``(state, batch, *, axis_name=None) -> sums`` of this run."""
    return functools.partial(steps.eval_step, task=self.task, loss_fn=loss_fn or self.loss_fn,
                             apply_fn=self.eval_model.apply)

  def with_learning_rate_scale(self, state: state_lib.TrainState,
                               factor: float) -> state_lib.TrainState:
    """``state`` training at ``factor`` times the configured rate (divergence rollback)."""
    return state.replace(opt_state=optimizers.set_learning_rate_scale(
        state.opt_state, self.learning_rate * factor))


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """``num_train_steps`` when set, else ``num_epochs`` epochs."""
  return config.num_train_steps or config.num_epochs * steps_per_epoch


def configured_learning_rate(optimizer_config: ml_collections.ConfigDict) -> float:
  """The rate a run trains at: the configured one, else the optimizer's default."""
  lr = optimizer_config.learning_rate
  return float(optimizers.default_learning_rate(optimizer_config.name) if lr is None else lr)


def _unit_rate(optimizer_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  section = ml_collections.ConfigDict(optimizer_config.to_dict())
  section.learning_rate = 1.0
  return section


def build_run(config: ml_collections.ConfigDict, *, parallel=None, data=None,
              initializer: Callable | None = None, implementation: str = "auto",
              microbatches: int = 0) -> Run:
  """Assembles the run ``config`` describes (``config`` must pass `cnnjax.config.validate`).

  Args:
    config: the run config.
    parallel: a `cnnjax.parallel.Parallel` (BatchNorm settings and the batch split
      follow it); None = one device.
    data: a loaded `cnnjax.data.Dataset` to reuse (re-seeded with ``config.seed``);
      None loads ``config.dataset``.
    initializer: a `cnnjax.training.state.make_initializer` result to reuse (runs of
      the same structure); None builds one.
    implementation: the `fast_ops` formulation of training (evaluation uses its
      forward-only resolution).
    microbatches: parts per step; 0 = `steps.resolve_microbatches`'s rule.

  Raises:
    DatasetNotFoundError: the dataset is not prepared (nothing is downloaded).
    ValueError: a batch size that does not split over the devices or exceeds the data.
  """
  if data is None:
    from cnnjax.data import load  # pylint: disable=g-import-not-at-top
    data = load(config)
  else:
    data = data.with_seed(config.seed)
  num_devices = 1 if parallel is None else parallel.num_devices
  if parallel is not None:
    parallel.check_batch_size(config.batch_size)
    parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
  task = tasks_lib.get_task(config.task, data.info)
  model = get_model(config.model, num_classes=task.output_size, dtype=config.dtype,
                    dropout_rate=config.dropout_rate, implementation=fast_ops.resolve(implementation),
                    **({} if parallel is None else parallel.model_kwargs()))
  eval_model = model.clone(implementation=fast_ops.resolve(implementation, forward_only=True))
  steps_per_epoch = data.steps_per_epoch
  budget = total_steps(config, steps_per_epoch)
  tx = optimizers.make_optimizer(_unit_rate(config.optimizer), budget)
  initializer = initializer or state_lib.make_initializer(
      model, tx, data.info.image_shape, ema_decay=config.optimizer.ema_decay)
  init_rng, train_rng = state_lib.run_keys(config.seed)
  lr = configured_learning_rate(config.optimizer)
  state = initializer(init_rng, lr)
  parts = steps.resolve_microbatches(
      microbatches, per_device_batch=config.batch_size // num_devices,
      has_batch_norm=has_batch_norm(config.model), backend=jax.default_backend(),
      num_params=state_lib.num_params(state.params))
  return Run(config=config, data=data, task=task, model=model, eval_model=eval_model,
             unit_rate_tx=tx,
             loss_fn=task.make_loss(config.loss), initializer=initializer, state=state,
             train_rng=train_rng, learning_rate=lr, total_steps=budget,
             steps_per_epoch=steps_per_epoch, microbatches=parts,
             augment_fn=augment_lib.per_example_fn(config.augment))
