"""Training a group of runs that differ only in values as ONE vmapped program.

The runs of a group share task, model, data, budget and optimizer *structure*; they may
differ in seed (initialisation, batch order, augmentation and dropout keys), learning
rate and loss (name and options). Each run is assembled by the same
`cnnjax.training.build.build_run` that a single run uses; the group stacks their states
along a leading axis ``[K, ...]`` and compiles one `jax.jit(jax.vmap(step))` of the runs'
own step function:

* the learning rate is already a value in each run's optimizer state (`build_run` keeps
  it there), so the runs share one update function;
* the loss is chosen per run by `lax.switch` over the group's distinct losses (each the
  run's own ``loss_fn``); under vmap the switch evaluates every loss on every run's
  outputs and selects, which is cheap next to the network and lets any losses share a
  group;
* each run's batch comes from its own seed's `Dataset.train_batches(epoch)`, stacked to
  ``[K, B, ...]``; evaluation batches (seed-independent) are shared.

So every run computes what `cnnjax.training.loop.train_and_evaluate` computes for its
config on one device (``parallel="none"``), by construction. A run whose loss becomes
non-finite is marked diverged (``on_nonfinite`` "stop" and "rollback" both end it, since
a rollback restores one run's checkpoint; "skip" skips as in a single run); vmap lanes
never mix, so its NaNs cannot reach the other runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from cnnjax.study.grid import group_key
from cnnjax.training import tracking
from cnnjax.training.build import Run, build_run
from cnnjax.training.nonfinite import Diverged, NonFinitePolicy, NonFiniteStep
from cnnjax.training.signals import Interrupted

__all__ = ["GroupRun", "build_group", "measure_vmap", "train_group"]

Log = Callable[[str], None]


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _loss_key(config: ml_collections.ConfigDict) -> str:
  return repr(sorted(config.loss.to_dict().items()))


@dataclasses.dataclass
class GroupRun:
  """The pieces of one group (see `build_group`); nothing is compiled yet.

  Attributes:
    runs: the K `Run`s, in config order.
    state: their stacked initial `TrainState` ``[K, ...]``.
    train_rngs: ``[K]`` keys (each run's ``train_rng``).
    loss_index: int32 ``[K]``, each run's position among the group's distinct losses.
    train_fn: jitted ``(state, batch [K,B,...], rngs, loss_index) -> (state, metrics [K])``.
    eval_fn: jitted ``(state, batch [B,...], loss_index) -> summed metrics [K, ...]``.
  """
  runs: list[Run]
  state: Any
  train_rngs: jax.Array
  loss_index: jax.Array
  train_fn: Callable
  eval_fn: Callable

  @property
  def first(self) -> Run:
    return self.runs[0]


def build_group(configs: Sequence[ml_collections.ConfigDict]) -> GroupRun:
  """Builds one group of (validated) configs that can share a program; nothing trained yet.

  Raises:
    ValueError: an empty group, or configs that differ in more than seed / learning
      rate / loss.
  """
  if not configs:
    raise ValueError("a study group needs at least one config, got none")
  if len({group_key(c) for c in configs}) > 1:
    raise ValueError("configs of one group may differ only in seed, optimizer.learning_rate "
                     f"and loss; got {len({group_key(c) for c in configs})} different structures")
  first = build_run(configs[0])
  runs = [first] + [build_run(c, data=first.data, initializer=first.initializer)
                    for c in configs[1:]]
  position: dict[str, int] = {}
  loss_fns = []
  for c, r in zip(configs, runs):
    if _loss_key(c) not in position:
      position[_loss_key(c)] = len(loss_fns)
      loss_fns.append(r.loss_fn)

  def select(index: jax.Array):
    if len(loss_fns) == 1:
      return loss_fns[0]
    return lambda outputs, batch: lax.switch(index, loss_fns, outputs, batch)

  def one_train(state, batch, rng, index):
    return first.train_step(select(index))(state, batch, rng)

  def one_eval(state, batch, index):
    return first.eval_step(select(index))(state, batch)

  return GroupRun(
      runs=runs, state=_stack([r.state for r in runs]),
      train_rngs=jnp.stack([r.train_rng for r in runs]),
      loss_index=jnp.asarray([position[_loss_key(c)] for c in configs], jnp.int32),
      train_fn=jax.jit(jax.vmap(one_train), donate_argnums=0),
      eval_fn=jax.jit(jax.vmap(one_eval, in_axes=(0, None, 0))))


def _stacked_batches(g: GroupRun, epoch: int):
  """Yields ``[K, B, ...]`` batches of ``epoch``: row k from run k's own seed."""
  seeds = [r.config.seed for r in g.runs]
  by_seed = {r.config.seed: r for r in g.runs}
  iters = {s: by_seed[s].data.train_batches(epoch) for s in dict.fromkeys(seeds)}
  for per_seed in zip(*iters.values()):
    batches = dict(zip(iters, per_seed))
    yield {k: np.stack([batches[s][k] for s in seeds]) for k in per_seed[0]}


def _evaluate(g: GroupRun, eval_fn, state, split: str) -> list[dict[str, Any]]:
  """Each run's finalized metrics on ``split``."""
  sums = jax.device_get(tracking.summed(lambda s, b: eval_fn(s, b, g.loss_index), state,
                                        g.first.data.eval_batches(split)))
  task = g.first.task
  return [task.finalize(jax.tree.map(lambda x, k=k: x[k], sums)) for k in range(len(g.runs))]


class _Lane:
  """One run's bookkeeping inside a group: policy, epoch means, best, target, history."""

  def __init__(self, run: Run, target: float | None):
    self.run, self.target = run, target
    self.policy = NonFinitePolicy(run.config.on_nonfinite,
                                  max_consecutive=run.config.max_consecutive_nonfinite)
    self.means = tracking.Means()
    self.best = tracking.Best(run.task.headline_goal)
    self.history: list[dict[str, Any]] = []
    self.diverged_step: int | None = None
    self.reached: tuple[int, int, float] | None = None

  def observe(self, step: int, metrics: dict[str, Any], names: Sequence[str]) -> None:
    if self.diverged_step is not None:
      return
    try:
      if self.policy.check(step, metrics) is None:
        self.means.add({k: metrics[k] for k in names})
    except (NonFiniteStep, Diverged):
      self.diverged_step = step

  def end_epoch(self, epoch: int, step: int, names, val, seconds: float) -> None:
    record = tracking.epoch_record(epoch, step, self.means.means(), names, val)
    record["seconds"] = seconds
    self.means = tracking.Means()
    headline = self.run.task.headline
    if val is not None and self.diverged_step is None:
      self.best.update(val[headline], epoch)
      if self.target is not None and self.reached is None and _reaches(
          val[headline], self.target, self.run.task.headline_goal):
        self.reached = (step, epoch, seconds)
    self.history.append(record)


def _reaches(value: float, target: float, goal: str) -> bool:
  return value >= target if goal == "max" else value <= target


def _compile(g: GroupRun) -> tuple[Callable, Callable]:
  probe = next(_stacked_batches(g, 0))
  train_fn = g.train_fn.lower(g.state, probe, g.train_rngs, g.loss_index).compile()
  eval_fn = g.eval_fn.lower(g.state, next(g.first.data.eval_batches("test")),
                            g.loss_index).compile()
  return train_fn, eval_fn


def train_group(configs: Sequence[ml_collections.ConfigDict], *, log: Log | None = None,
                label: str = "", target: float | None = None,
                stop=None) -> list[dict[str, Any]]:
  """Trains the K runs of ``configs`` together; returns one result dict per run, in order.

  Args:
    configs: validated run configs (e.g. from `cnnjax.study.expand`) differing only in
      seed, optimizer.learning_rate and loss.
    log: called with one progress line per epoch (None = silent).
    label: a name for the group in progress lines.
    target: a value of the task's headline metric on validation whose first reach is
      reported per run (``steps_to_target``, ``epochs_to_target``, ``seconds_to_target``).
    stop: a `cnnjax.training.signals.StopRequest`, checked at every epoch end.

  Raises:
    Interrupted: a stop was requested (a group keeps no checkpoints).

  Returns:
    Per run: ``history`` (per epoch: epoch, step, train_<metric>, val_<metric>, seconds),
    ``test_<metric>`` for each of the task's scalar metrics, ``test_examples``,
    ``best_val_<headline>``, ``best_epoch``, ``final_val_<headline>``, ``headline``,
    ``headline_goal``, ``diverged``, ``diverged_step``, ``steps_to_target``,
    ``epochs_to_target``, ``seconds_to_target``, ``compile_seconds``, ``train_seconds``
    (the group's, shared by its K runs), ``group_size``. ``seconds`` and
    ``seconds_to_target`` are the group's wall time divided by K: a run's share.
  """
  log = log or (lambda _: None)
  t0 = time.perf_counter()
  g = build_group(configs)
  train_fn, eval_fn = _compile(g)
  compile_seconds = time.perf_counter() - t0
  first, k_runs = g.first, len(configs)
  names = ("loss", *first.task.train_metric_names)
  lanes = [_Lane(r, target) for r in g.runs]
  state, step, train_seconds = g.state, 0, 0.0
  has_val = first.data.num_examples("validation") > 0
  for epoch in range(1, first.num_epochs + 1):
    t_epoch = time.perf_counter()
    pending = []
    for batch in _stacked_batches(g, epoch - 1):
      state, metrics = train_fn(state, batch, g.train_rngs, g.loss_index)
      pending.append(metrics)
      step += 1
      if step >= first.total_steps:
        break
    for i, m in enumerate(jax.device_get(pending)):
      for k, lane in enumerate(lanes):
        lane.observe(step - len(pending) + 1 + i, {n: v[k] for n, v in m.items()}, names)
    val = None
    if has_val and (epoch % first.config.eval_every_epochs == 0 or step >= first.total_steps):
      val = [first.task.scalars(v) for v in _evaluate(g, eval_fn, state, "validation")]
    train_seconds += time.perf_counter() - t_epoch
    for k, lane in enumerate(lanes):
      lane.end_epoch(epoch, step, names, None if val is None else val[k],
                     train_seconds / k_runs)
    if val is not None:
      log(_epoch_line(label, epoch, first, lanes, val, train_seconds))
    if stop is not None and stop.requested:
      raise Interrupted(f"interrupted by {stop.name} in {label or 'a study group'}, epoch "
                        f"{epoch}; a study keeps no checkpoints: nothing was written",
                        stop.exit_code)
  test = _evaluate(g, eval_fn, state, "test")
  return [_result(lane, t, step, compile_seconds, train_seconds, k_runs)
          for lane, t in zip(lanes, test)]


def _epoch_line(label, epoch, first: Run, lanes, val, train_seconds) -> str:
  headline = first.task.headline
  ok = [k for k, lane in enumerate(lanes) if lane.diverged_step is None]
  values = np.asarray([val[k][headline] for k in ok]) if ok else np.array([np.nan])
  return (f"{label} epoch {epoch}/{first.num_epochs} ({train_seconds:.1f}s): val {headline} "
          f"mean {np.mean(values):.4f} [{np.min(values):.4f}, {np.max(values):.4f}]"
          + (f", {len(lanes) - len(ok)} diverged" if len(ok) < len(lanes) else ""))


def _result(lane: _Lane, test: dict[str, Any], step: int, compile_seconds: float,
            train_seconds: float, group_size: int) -> dict[str, Any]:
  task = lane.run.task
  headline, diverged = task.headline, lane.diverged_step is not None
  last = lane.history[-1] if lane.history else {}
  reached = lane.reached
  return {
      "diverged": diverged, "diverged_step": lane.diverged_step,
      **{f"test_{k}": None if diverged else v for k, v in task.scalars(test).items()},
      "test_examples": test["count"], "headline": headline, "headline_goal": task.headline_goal,
      "headline_percent": task.headline_percent,
      f"final_val_{headline}": None if diverged else last.get(f"val_{headline}"),
      f"best_val_{headline}": lane.best.value, "best_epoch": lane.best.epoch,
      "steps_to_target": reached[0] if reached else None,
      "epochs_to_target": reached[1] if reached else None,
      "seconds_to_target": reached[2] if reached else None,
      "history": lane.history, "steps": step, "compile_seconds": compile_seconds,
      "train_seconds": train_seconds, "group_size": group_size,
  }


def measure_vmap(configs: Sequence[ml_collections.ConfigDict], *, steps: int = 40,
                 log: Log | None = None) -> dict[str, Any]:
  """Wall time of ``steps`` training steps for K runs: vmapped together vs one after another.

  Both sides use the same batches and compiled-once steps; "sequential" compiles one
  single-run step per distinct loss (a fresh process per run, as `experiments.main`
  does, would compile K times). Times are after a warm-up step and block on the result.

  Returns:
    ``{"k", "steps", "vmapped_seconds", "sequential_seconds", "speedup"
    (sequential / vmapped), "vmapped_compile_seconds", "sequential_compile_seconds"}``.
  """
  log = log or (lambda _: None)
  g = build_group(configs)
  k_runs = len(configs)
  batches, epoch = [], 0
  while len(batches) < steps + 1:
    batches += list(_stacked_batches(g, epoch))
    epoch += 1
  batches = batches[:steps + 1]

  def timed(fn, state, rows):
    state = fn(state, *rows(batches[0]))[0]
    jax.block_until_ready(state)
    t = time.perf_counter()
    for b in batches[1:]:
      state, m = fn(state, *rows(b))
    jax.block_until_ready((state, m))
    return time.perf_counter() - t

  t = time.perf_counter()
  train_fn = g.train_fn.lower(g.state, batches[0], g.train_rngs, g.loss_index).compile()
  vmapped_compile = time.perf_counter() - t
  vmapped = timed(train_fn, g.state, lambda b: (b, g.train_rngs, g.loss_index))
  log(f"vmapped: {k_runs} runs x {steps} steps in {vmapped:.2f}s (compile {vmapped_compile:.1f}s)")

  t = time.perf_counter()
  index = np.asarray(g.loss_index)
  single = {}
  for k, run in enumerate(g.runs):
    if index[k] not in single:
      single[index[k]] = jax.jit(run.train_step(), donate_argnums=0).lower(
          run.state, {n: v[k] for n, v in batches[0].items()}, run.train_rng).compile()
  sequential_compile = time.perf_counter() - t
  sequential = sum(
      timed(single[index[k]], jax.tree.map(jnp.copy, run.state),
            lambda b, k=k, run=run: ({n: v[k] for n, v in b.items()}, run.train_rng))
      for k, run in enumerate(g.runs))
  log(f"sequential: {k_runs} runs x {steps} steps in {sequential:.2f}s "
      f"(compile {sequential_compile:.1f}s)")
  return {"k": k_runs, "steps": steps, "vmapped_seconds": vmapped,
          "sequential_seconds": sequential, "speedup": sequential / vmapped,
          "vmapped_compile_seconds": vmapped_compile,
          "sequential_compile_seconds": sequential_compile}
