"""`build_run`: the one place a run is assembled from its config.

Data, task, model, loss, optimizer, initial state, step functions and the budget
all come from here (each piece from the task's assembly hooks, `cnnjax.tasks.Task`:
the defaults train one model with one optimizer); `cnnjax.training.loop.train_and_evaluate` compiles and drives
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
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from cnnjax import optimizers
from cnnjax import tasks as tasks_lib
from cnnjax.data import augment as augment_lib
from cnnjax.models import fast_ops
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
    """The pure ``(state, batch, rng, *, axis_name=None) -> (state, metrics)`` of this run
    (`Task.train_step`; `cnnjax.training.steps.train_step` unless the task says otherwise)."""
    return self.task.train_step(self, loss_fn or self.loss_fn)

  def eval_step(self, loss_fn: tasks_lib.TaskLoss | None = None) -> Callable:
    """The pure ``(state, batch, *, axis_name=None) -> sums`` of this run (`Task.eval_step`)."""
    return self.task.eval_step(self, loss_fn or self.loss_fn)

  def with_learning_rate_scale(self, state, factor: float):
    """``state`` training at ``factor`` times the configured rate (divergence rollback)."""
    return self.task.with_learning_rate_scale(self, state, factor)


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """``num_train_steps`` when set, else ``num_epochs`` epochs."""
  return config.num_train_steps or config.num_epochs * steps_per_epoch


def configured_learning_rate(optimizer_config: ml_collections.ConfigDict) -> float:
  """The rate a run trains at: the configured one, else the optimizer's default."""
  lr = optimizer_config.learning_rate
  if lr is None:
    lr = optimizers.default_learning_rate(optimizers.base_name(optimizer_config))
  return float(lr)


def optimizer_key(config: ml_collections.ConfigDict) -> str:
  """What identifies a run's optimizer chain: its ``optimizer`` section but the rate."""
  section = {k: v for k, v in config.optimizer.to_dict().items() if k != "learning_rate"}
  return json.dumps(section, sort_keys=True, default=str)


def batch_sharded(parallel) -> bool:
  """Whether a run's steps are one jit with the batch split over several devices."""
  return parallel is not None and parallel.mode == "sharded" and parallel.num_devices > 1


def build_run(config: ml_collections.ConfigDict, *, parallel=None, data=None,
              initializer: Callable | None = None, implementation: str = "auto",
              microbatches: int = 0,
              optimizer_choices: Sequence[ml_collections.ConfigDict] = ()) -> Run:
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
    optimizer_choices: configs whose optimizer chains (`optimizer_key`) this run's is
      one of: the run then trains with `cnnjax.optimizers.switched` over them, its own
      chosen by a value in the state, so runs with different optimizers share one
      compiled step (``initializer`` must then come from a run of the same choices).

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
  task = tasks_lib.get_task(config.task, data.info, data=data, config=config)
  data = task.prepare(data)
  model = task.make_model(config, implementation=fast_ops.resolve(
                              implementation, batch_sharded=batch_sharded(parallel)),
                          **({} if parallel is None else parallel.model_kwargs()))
  eval_model = model.clone(implementation=fast_ops.resolve(implementation, forward_only=True))
  steps_per_epoch = data.steps_per_epoch
  budget = total_steps(config, steps_per_epoch)
  weights = task.train_weights(steps_per_epoch, budget)
  if weights is not None:
    data = data.with_train_weights(weights)
  choice = None
  if optimizer_choices:
    keys = list(dict.fromkeys(optimizer_key(c) for c in optimizer_choices))
    if optimizer_key(config) not in keys:
      raise ValueError("build_run: the run's optimizer is not one of optimizer_choices")
    choice = keys.index(optimizer_key(config))
    firsts = {optimizer_key(c): c for c in reversed(optimizer_choices)}
    # One vector for all the parameters where every choice is per-coordinate: XLA then
    # compiles each choice's update once, not once per parameter.
    flat = all(optimizers.per_coordinate(firsts[k].optimizer) for k in keys)
    tx = optimizers.switched([task.make_optimizer(firsts[k], budget) for k in keys], flat=flat)
  else:
    tx = task.make_optimizer(config, budget)
  initializer = initializer or task.make_initializer(model, tx, config, budget)
  init_rng, train_rng = state_lib.run_keys(config.seed)
  lr = configured_learning_rate(config.optimizer)
  state = initializer(init_rng, lr)
  if choice is not None:
    state = state.replace(opt_state=optimizers.with_switch_index(state.opt_state, choice))
  parts = steps.resolve_microbatches(
      microbatches, per_device_batch=config.batch_size // num_devices,
      has_batch_norm=bool(jax.tree.leaves(state.batch_stats)), backend=jax.default_backend(),
      num_params=state_lib.num_params(state.params))
  return Run(config=config, data=data, task=task, model=model, eval_model=eval_model,
             unit_rate_tx=tx,
             loss_fn=task.make_loss(config.loss), initializer=initializer, state=state,
             train_rng=train_rng, learning_rate=lr, total_steps=budget,
             steps_per_epoch=steps_per_epoch, microbatches=parts,
             augment_fn=augment_lib.per_example_fn(config.augment))
