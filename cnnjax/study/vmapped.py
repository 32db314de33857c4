"""Training a group of runs that differ only in values: ONE compiled program for the group.

The runs of a group share task, model, data, budget and optimizer *structure*; they may
differ in seed (initialisation, batch order, augmentation and dropout keys), learning
rate and loss (name and options), and in the optimizer itself for tasks that allow it
(`cnnjax.optimizers.switched`: the choice is a value in the optimizer state; meant for
the sequential strategy). Each run is assembled by the same
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

Three strategies run that program (`STRATEGIES`): ``"vmap"`` stacks the K runs and
trains them in one `jax.vmap`-ed step; ``"sequential"`` compiles the *un-vmapped* step
once (the loss index a scalar, so `lax.switch` runs only the run's own loss) and trains
the runs one after another with it, an epoch per compiled call (`cnnjax.study.lanes`);
``"lanes"`` does the same with one run per device side by side. On a 2-core CPU lanes
are the fastest (a vmapped step of K small convolutional runs costs more than K single
steps, and the vmapped program takes longer to compile; docs/studies.md measures all
three); on an accelerator stacking fills the device. ``"auto"`` picks by backend
(`resolve_strategy`).

So every run computes what `cnnjax.training.loop.train_and_evaluate` computes for its
config on one device (``parallel="none"``), by construction. A run whose loss becomes
non-finite is marked diverged (``on_nonfinite`` "stop" and "rollback" both end it, since
a rollback restores one run's checkpoint; "skip" skips as in a single run); vmap lanes
never mix, so its NaNs cannot reach the other runs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from cnnjax.study import lanes as lanes_lib
from cnnjax.study.grid import STRATEGIES, group_key, switchable
from cnnjax.training import tracking
from cnnjax.training.build import Run, build_run, optimizer_key
from cnnjax.training.nonfinite import Diverged, NonFinitePolicy, NonFiniteStep
from cnnjax.training.signals import Interrupted

__all__ = ["GroupRun", "STRATEGIES", "build_group", "measure_vmap", "resolve_strategy",
           "train_group"]

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
    state: their stacked initial `TrainState` ``[K, ...]`` (None in the lanes strategy,
      which stacks each set of lanes' own runs on the host instead).
    train_rngs: ``[K]`` keys (each run's ``train_rng``; None in the lanes strategy, whose
      sets of lanes stack their own runs' keys).
    loss_index: int32 ``[K]``, each run's position among the group's distinct losses (a
      numpy array in the lanes strategy, whose sets of lanes put their own rows).
    train_fn: jitted ``(state, batch [K,B,...], rngs, loss_index) -> (state, metrics [K])``.
    eval_fn: jitted ``(state, batch [B,...], loss_index) -> summed metrics [K, ...]``.
    one_train: ``(state, batch [B, ...], rng, loss_index) -> (state, metrics)``, the
      un-vmapped step of any one run of the group (no leading axis, not jitted): what the
      sequential and lanes strategies compile (`cnnjax.study.lanes`).
    one_eval: ``(state, batch, loss_index) -> summed metrics`` of one run, likewise.
  """
  runs: list[Run]
  state: Any
  train_rngs: jax.Array | None
  loss_index: jax.Array | np.ndarray
  train_fn: Callable
  eval_fn: Callable
  one_train: Callable
  one_eval: Callable

  @property
  def first(self) -> Run:
    return self.runs[0]


def build_group(configs: Sequence[ml_collections.ConfigDict]) -> GroupRun:
  """Builds one group of (validated) configs that can share a program; nothing trained yet.

  Configs that differ in their optimizer (where `cnnjax.study.grid.switchable`) train
  with one `cnnjax.optimizers.switched` chain: meant for the sequential and lanes
  strategies, where only each run's own optimizer runs (vmapped, every run would compute
  every choice).

  Raises:
    ValueError: an empty group, or configs that differ in more than seed / learning
      rate / loss (/ switchable optimizer).
  """
  return _finish_group(_start_group(configs))


@dataclasses.dataclass
class _GroupStart:
  """The first half of `build_group`: enough to trace the group's programs (the first run
  and one run per distinct loss); the other runs are built by `_finish_group`."""
  configs: Sequence[ml_collections.ConfigDict]
  choices: Sequence[ml_collections.ConfigDict]
  built: dict[int, Run]
  position: dict[str, int]
  one_train: Callable
  one_eval: Callable

  @property
  def first(self) -> Run:
    return self.built[0]


def _start_group(configs: Sequence[ml_collections.ConfigDict]) -> _GroupStart:
  if not configs:
    raise ValueError("a study group needs at least one config, got none")
  # Different optimizers: one `optimizers.switched` chain, the choice a value in the state.
  switch = len({optimizer_key(c) for c in configs}) > 1 and all(map(switchable, configs))
  keys = {group_key(c, optimizer_as_value=switch) for c in configs}
  if len(keys) > 1:
    raise ValueError("configs of one group may differ only in seed, optimizer.learning_rate "
                     "and loss (and, for tasks that allow it, the optimizer); got "
                     f"{len(keys)} different structures")
  choices = configs if switch else ()
  first = build_run(configs[0], optimizer_choices=choices)
  built = {0: first}
  position: dict[str, int] = {}
  loss_fns = []
  for k, c in enumerate(configs):
    if _loss_key(c) not in position:
      if k not in built:
        built[k] = build_run(c, data=first.data, initializer=first.initializer,
                             optimizer_choices=choices)
      position[_loss_key(c)] = len(loss_fns)
      loss_fns.append(built[k].loss_fn)

  def select(index: jax.Array):
    if len(loss_fns) == 1:
      return loss_fns[0]
    return lambda outputs, batch: lax.switch(index, loss_fns, outputs, batch)

  def one_train(state, batch, rng, index):
    return first.train_step(select(index))(state, batch, rng)

  def one_eval(state, batch, index):
    return first.eval_step(select(index))(state, batch)

  return _GroupStart(configs=configs, choices=choices, built=built, position=position,
                     one_train=one_train, one_eval=one_eval)


def _finish_group(start: _GroupStart, *, stack: bool = True) -> GroupRun:
  """The group with all its runs built; ``stack=False`` (lanes) leaves ``state`` None: each
  set of lanes stacks its own runs' states (`_lane_part`), the K train states are never
  stacked, nor are their keys (each set of lanes stacks its own); the loss indices are kept
  on the host (no eager program to compile while the lanes' programs compile)."""
  configs, first, one_train, one_eval = start.configs, start.first, start.one_train, start.one_eval
  runs = [start.built.get(k) or build_run(c, data=first.data, initializer=first.initializer,
                                          optimizer_choices=start.choices)
          for k, c in enumerate(configs)]
  # A group of one: the un-vmapped step (for a single loss the program `experiments.main`
  # compiles), with the group's leading axis of 1 around it.
  lead, drop = (lambda t: jax.tree.map(lambda x: x[None], t),
                lambda t: jax.tree.map(lambda x: x[0], t))
  single_train = lambda st, b, r, i: lead(one_train(drop(st), drop(b), r[0], i[0]))
  single_eval = lambda st, b, i: lead(one_eval(drop(st), b, i[0]))
  if len(runs) == 1:
    train_fn, eval_fn = single_train, single_eval
  else:
    train_fn, eval_fn = jax.vmap(one_train), jax.vmap(one_eval, in_axes=(0, None, 0))
  return GroupRun(
      runs=runs, state=_stack([r.state for r in runs]) if stack else None,
      train_rngs=jnp.stack([r.train_rng for r in runs]) if stack else None,
      loss_index=(jnp.asarray if stack else np.asarray)(
          [start.position[_loss_key(c)] for c in configs], np.int32),
      train_fn=jax.jit(train_fn, donate_argnums=0), eval_fn=jax.jit(eval_fn),
      one_train=one_train, one_eval=one_eval)


def resolve_strategy(strategy: str, backend: str | None = None) -> str:
  """``"vmap"``, ``"sequential"`` or ``"lanes"``: ``strategy`` itself, or for ``"auto"``
  the fastest measured on ``backend`` (default: JAX's): lanes on CPU, vmap on accelerators.

  Raises:
    ValueError: ``strategy`` is not one of `STRATEGIES`.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"study strategy {strategy!r} is not one of {list(STRATEGIES)}")
  if strategy != "auto":
    return strategy
  return "lanes" if (backend or jax.default_backend()) == "cpu" else "vmap"


def _host_stack(trees: Sequence[Any]) -> Any:
  # On the host: eager jnp indexing or stacking would dispatch (and first compile) one
  # program per leaf, ~0.2 s per set of lanes for a state of 192 leaves.
  def stack(*xs):
    if jax.dtypes.issubdtype(xs[0].dtype, jax.dtypes.prng_key):   # typed keys stay typed
      return jax.random.wrap_key_data(np.stack([np.asarray(jax.random.key_data(x)) for x in xs]),
                                      impl=jax.random.key_impl(xs[0]))
    return np.stack([np.asarray(x) for x in xs])
  return jax.tree.map(stack, *trees)


def _lane_part(g: GroupRun, rows: Sequence[int], programs: lanes_lib.LanePrograms) -> GroupRun:
  """Runs ``rows`` of ``g`` as a group on ``programs``' lanes (placed one per device)."""
  runs = [g.runs[k] for k in rows]
  return GroupRun(runs=runs,
                  state=programs.put(_host_stack([r.state for r in runs])),
                  train_rngs=programs.put(_host_stack([r.train_rng for r in runs])),
                  loss_index=programs.put(np.asarray(g.loss_index)[np.asarray(rows)]),
                  train_fn=programs.train, eval_fn=programs.eval,
                  one_train=g.one_train, one_eval=g.one_eval)


def _stacked_batches(g: GroupRun, epoch: int):
  """Yields ``[K, B, ...]`` batches of ``epoch``: row k from run k's own seed."""
  seeds = [r.config.seed for r in g.runs]
  by_seed = {r.config.seed: r for r in g.runs}
  iters = {s: by_seed[s].data.train_batches(epoch) for s in dict.fromkeys(seeds)}
  for per_seed in zip(*iters.values()):
    batches = dict(zip(iters, per_seed))
    yield {k: np.stack([batches[s][k] for s in seeds]) for k in per_seed[0]}


def _evaluate(g: GroupRun, eval_fn, state, split: str,
              validations: Sequence[Mapping[str, Any] | None] | None = None
              ) -> list[dict[str, Any]]:
  """Each run's finalized metrics on ``split`` (calibrated on ``validations[k]``)."""
  sums = jax.device_get(tracking.summed(lambda s, b: eval_fn(s, b, g.loss_index), state,
                                        g.first.data.eval_batches(split)))
  task = g.first.task
  validations = validations or [None] * len(g.runs)
  return [task.finalize(jax.tree.map(lambda x, k=k: x[k], sums), validations[k])
          for k in range(len(g.runs))]


@jax.jit
def _keep_improved(best, state, improved):
  """Per run k: ``state[k]`` where ``improved[k]``, else ``best[k]``."""
  return jax.tree.map(lambda b, s: jnp.where(
      improved.reshape(improved.shape + (1,) * (s.ndim - 1)), s, b), best, state)


class _Lane:
  """One run's bookkeeping inside a group: policy, epoch means, best, target, history,
  the validation result of the latest and of the selected epoch."""

  def __init__(self, run: Run, target: float | None, select_by: str = ""):
    self.run, self.target, self.select_by = run, target, select_by
    self.selected = tracking.Best(run.task.goal_of(select_by) if select_by else "max")
    self.last_val: dict[str, Any] | None = None
    self.selected_val: dict[str, Any] | None = None
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

  def end_epoch(self, epoch: int, step: int, names, val, seconds: float) -> bool:
    """Records the epoch; returns whether it is the newly selected one (``select_by``)."""
    record = tracking.epoch_record(epoch, step, self.means.means(), names, val)
    record["seconds"] = seconds
    self.means = tracking.Means()
    headline, improved = self.run.task.headline, False
    if val is not None:
      self.last_val = val
    if val is not None and self.diverged_step is None:
      self.best.update(val[headline], epoch)
      if self.select_by and self.selected.update(val[self.select_by], epoch):
        self.selected_val, improved = val, True
      if self.target is not None and self.reached is None and _reaches(
          val[headline], self.target, self.run.task.headline_goal):
        self.reached = (step, epoch, seconds)
    self.history.append(record)
    return improved


def _reaches(value: float, target: float, goal: str) -> bool:
  return value >= target if goal == "max" else value <= target


def _epoch_lengths(first: Run) -> list[int]:
  """Steps of each epoch (the last may be cut by the step budget)."""
  lengths, left = [], first.total_steps
  for _ in range(first.num_epochs):
    lengths.append(max(0, min(first.steps_per_epoch, left)))
    left -= lengths[-1]
  return lengths


def _probe_batch(run: Run) -> dict[str, np.ndarray]:
  return next(run.data.train_batches(0))


def _compile_vmapped(g: GroupRun) -> tuple[Callable, Callable]:
  probe = next(_stacked_batches(g, 0))
  train_fn = g.train_fn.lower(g.state, probe, g.train_rngs, g.loss_index).compile()
  eval_fn = g.eval_fn.lower(g.state, next(g.first.data.eval_batches("test")),
                            g.loss_index).compile()
  return train_fn, eval_fn


def _compile_lanes(start: _GroupStart, programs: lanes_lib.LanePrograms, chunk: int
                   ) -> Callable[[], tuple[Callable, Callable]]:
  """Traces the lanes' programs now and compiles them in background threads (XLA
  releases the GIL), so the group's other runs can be built meanwhile; returns a
  function that waits for both executables."""
  width, first = programs.size, start.first
  lanes = lambda x, *lead: jax.ShapeDtypeStruct((width, *lead, *x.shape), x.dtype,
                                                sharding=programs.sharding)
  state = jax.tree.map(lanes, first.state)
  rngs, index = lanes(first.train_rng), jax.ShapeDtypeStruct((width,), jnp.int32,
                                                             sharding=programs.sharding)
  probe = {k: lanes(v, chunk) for k, v in _probe_batch(first).items()}
  pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="cnnjax-compile")
  try:
    # The training program (the longer compile) starts while the evaluation one is traced.
    futures = [pool.submit(programs.train.lower(state, probe, rngs, index).compile)]
    evaluate = programs.eval.lower(state, next(first.data.eval_batches("test")), index)
    futures.append(pool.submit(evaluate.compile))
  finally:
    pool.shutdown(wait=False)
  return lambda: tuple(f.result() for f in futures)


def train_group(configs: Sequence[ml_collections.ConfigDict], *, log: Log | None = None,
                label: str = "", target: float | None = None,
                select_by: str = "", stop=None, strategy: str = "vmap") -> list[dict[str, Any]]:
  """Trains the K runs of ``configs`` with one compiled program; one result dict per run.

  Args:
    configs: validated run configs (e.g. from `cnnjax.study.expand`) differing only in
      seed, optimizer.learning_rate and loss.
    log: called with one progress line per epoch (None = silent).
    label: a name for the group in progress lines.
    target: a value of the task's headline metric on validation whose first reach is
      reported per run (``steps_to_target``, ``epochs_to_target``, ``seconds_to_target``).
    select_by: a validation metric by which each run's best epoch is selected and tested.
    stop: a `cnnjax.training.signals.StopRequest` checked after every epoch.
    strategy: one of `STRATEGIES` ("auto": `resolve_strategy`): ``"vmap"``, the K runs
      stacked in one vmapped step; ``"sequential"``, one run after another, each epoch one
      compiled call of the un-vmapped step (`cnnjax.study.lanes`); ``"lanes"``, the same
      with ``L`` runs side by side, one per device (`cnnjax.study.lanes.lane_count`).

  Returns:
    Per run: ``history`` (per epoch: epoch, step, train_<metric>, val_<metric>, seconds),
    ``test_<metric>`` for each of the task's scalar metrics (test metrics after
    calibration use the last epoch's validation), ``test_details``, ``test_examples``,
    ``best_val_<headline>``, ``best_epoch``, ``final_val_<headline>``, ``headline``,
    ``headline_goal``, ``diverged``, ``diverged_step``, ``steps_to_target``,
    ``epochs_to_target``, ``seconds_to_target``, ``compile_seconds``, ``train_seconds``
    (the group's, shared by its K runs: its epochs, validation included),
    ``eval_seconds`` (the group's validation and test evaluations), ``group_size``,
    ``strategy``, ``lanes`` (runs trained side by side); with
    ``select_by`` also ``selected_epoch`` and ``selected_test_<metric>`` (the selected
    state, calibrated on its own validation result); ``start_test_<metric>`` (the
    initial state's test result) for a task with ``evaluate_at_start``. ``seconds`` and
    ``seconds_to_target`` are a run's share of the machine's time: the wall time of the
    runs trained together divided by their number (K vmapped, L in lanes, 1 sequential).
  """
  log = log or (lambda _: None)
  strategy = resolve_strategy(strategy)
  t0 = time.perf_counter()
  k_runs = len(configs)
  if strategy == "vmap":
    g = build_group(configs)
    width, parts = k_runs, iter([g])
    programs = _compile_vmapped(g)
    run_epoch, prepare, width_of = _vmapped_epoch, None, [k_runs]
  else:
    start = _start_group(configs)
    width = 1 if strategy == "sequential" else lanes_lib.lane_count(k_runs)
    lane_programs = lanes_lib.LanePrograms(start.one_train, start.one_eval,
                                           jax.local_devices()[:width])
    lengths = [n for n in _epoch_lengths(start.first) if n]
    batch_bytes = sum(v.nbytes for v in _probe_batch(start.first).values())
    chunk = lanes_lib.chunk_steps(lengths[0], lengths[-1], width * batch_bytes)
    compiled = _compile_lanes(start, lane_programs, chunk)
    g = _finish_group(start, stack=False)
    programs = compiled()
    # Each part: L runs (the last padded with copies of its last run, results dropped).
    rows = [list(range(i, min(i + width, k_runs))) for i in range(0, k_runs, width)]
    width_of = [len(r) for r in rows]
    rows = [r + [r[-1]] * (width - len(r)) for r in rows]
    parts = (_lane_part(g, r, lane_programs) for r in rows)
    run_epoch = functools.partial(_lanes_epoch, chunk=chunk)
    prepare = functools.partial(_lanes_blocks, chunk=chunk, put=lane_programs.put)
  compile_seconds = time.perf_counter() - t0
  n_parts = 1 if strategy == "vmap" else len(rows)
  results, train_seconds, eval_seconds = [], 0.0, 0.0
  for i, part in enumerate(parts):
    part_label = label + (f" runs {i * width + 1}-{i * width + width_of[i]}/{k_runs}"
                          if n_parts > 1 and width > 1 else
                          f" run {i + 1}/{n_parts}" if n_parts > 1 else "")
    out = _train_part(part, programs, run_epoch, prepare, part_label, target, select_by, stop,
                      log)
    results += out if strategy == "vmap" else out[:width_of[i]]
    train_seconds += out[-1]["train_seconds"]
    eval_seconds += out[-1]["eval_seconds"]
  for r in results:
    r.update(compile_seconds=compile_seconds, train_seconds=train_seconds,
             eval_seconds=eval_seconds, group_size=k_runs, strategy=strategy, lanes=width)
  return results


def _vmapped_epoch(g: GroupRun, train_fn, state, epoch: int, steps: int, blocks=None):
  """Dispatches ``steps`` vmapped steps of ``epoch``; returns the state and a function that
  waits for the metrics: per step a dict of ``[K]``."""
  del blocks  # the vmapped steps read their batches one at a time
  pending = []
  for batch in itertools.islice(_stacked_batches(g, epoch), steps):
    state, metrics = train_fn(state, batch, g.train_rngs, g.loss_index)
    pending.append(metrics)
  return state, lambda: jax.device_get(pending)


def _lanes_blocks(g: GroupRun, epoch: int, steps: int, *, chunk: int, put) -> Iterator[Any]:
  """The ``[L, chunk, B, ...]`` blocks of ``steps`` steps of ``epoch`` (lane l's rows in its
  own seed's order), on the lanes' devices; the first is built at once, so that building
  it overlaps the previous epoch's computation, the others as they are consumed."""
  rows = _stacked_batches(g, epoch)

  def blocks():
    for _ in range(steps // chunk):
      block = list(itertools.islice(rows, chunk))
      yield put({k: np.stack([b[k] for b in block], axis=1) for k in block[0]})

  it = blocks()
  first = next(it, None)
  return it if first is None else itertools.chain([first], it)


def _lanes_epoch(g: GroupRun, train_fn, state, epoch: int, steps: int, blocks, *, chunk: int):
  """Dispatches ``steps`` steps of ``epoch`` on the lanes, a block of ``chunk`` per compiled
  call (``blocks`` from `_lanes_blocks`); returns the state and a function that waits for
  the metrics: per step a dict of ``[L]``."""
  pending = []
  for block in blocks:
    state, metrics = train_fn(state, block, g.train_rngs, g.loss_index)
    pending.append(metrics)

  def fetch():
    steps_metrics = []
    for m in jax.device_get(pending):
      steps_metrics += [{n: v[:, j] for n, v in m.items()}
                        for j in range(next(iter(m.values())).shape[1])]
    return steps_metrics
  return state, fetch


def _train_part(g: GroupRun, programs, run_epoch, prepare, label: str, target, select_by: str,
                stop, log: Log) -> list[dict[str, Any]]:
  """Trains ``g`` (a whole vmapped group, or the runs of one set of lanes) with compiled
  ``programs``; ``prepare(g, epoch, steps)`` (or None) builds an epoch's input ahead."""
  train_fn, eval_fn = programs
  lanes = [_Lane(r, target, select_by) for r in g.runs]
  t_eval = time.perf_counter()
  start = (_evaluate(g, eval_fn, g.state, "test") if g.first.task.evaluate_at_start
           else [{}] * len(lanes))
  start_seconds = time.perf_counter() - t_eval
  state, best, step, train_seconds, val_seconds = _train_epochs(
      g, functools.partial(run_epoch, g, train_fn),
      prepare and functools.partial(prepare, g), eval_fn, lanes, log, label, bool(select_by),
      stop)
  has_val = g.first.data.num_examples("validation") > 0
  t_eval = time.perf_counter()
  test = _evaluate(g, eval_fn, state, "test", [lane.last_val or {} for lane in lanes] if has_val
                   else [{}] * len(lanes))
  results = [{**_result(lane, t, step, 0.0, train_seconds, len(lanes)),
              **{f"start_test_{k}": v for k, v in lane.run.task.scalars(s).items()}}
             for lane, t, s in zip(lanes, test, start)]
  if select_by and has_val:
    selected = _evaluate(g, eval_fn, best, "test", [lane.selected_val or {} for lane in lanes])
    task = g.first.task
    for r, lane, t in zip(results, lanes, selected):
      r["selected_epoch"] = lane.selected.epoch
      r.update({f"selected_test_{k}": None if r["diverged"] else v
                for k, v in task.scalars(t).items()})
  eval_seconds = val_seconds + start_seconds + time.perf_counter() - t_eval
  for r in results:
    r["eval_seconds"] = eval_seconds
  return results


def _train_epochs(g: GroupRun, run_epoch, prepare, eval_fn, lanes, log: Log, label: str,
                  select: bool, stop):
  """The epochs of a group; returns the final state, the selected states, steps, and the
  seconds of the epochs (validation included) and of their validations.

  The next epoch's input is built (``prepare``) while the device trains this one. The
  validation is dispatched only after the training's metrics are in: on a CPU with
  several devices, dispatching a program whose inputs are still being computed waits for
  them (measured), so dispatching it earlier would hold the host up instead.
  """
  first, k_runs = g.first, len(g.runs)
  names = ("loss", *first.task.train_metric_names)
  state, step, train_seconds, eval_seconds = g.state, 0, 0.0, 0.0
  best = jax.tree.map(jnp.copy, state) if select else None
  has_val = first.data.num_examples("validation") > 0
  lengths = list(itertools.takewhile(bool, _epoch_lengths(first)))
  # The first epoch's clock starts before its input is built; each later epoch's input is
  # built (and timed) inside the epoch before it.
  t_epoch = time.perf_counter()
  ahead = prepare(0, lengths[0]) if prepare and lengths else None
  for epoch, n_steps in enumerate(lengths, start=1):
    t_epoch = t_epoch if epoch == 1 else time.perf_counter()
    state, fetch = run_epoch(state, epoch - 1, n_steps, ahead)
    ahead = prepare(epoch, lengths[epoch]) if prepare and epoch < len(lengths) else None
    pending = fetch()
    for i, m in enumerate(pending):
      for k, lane in enumerate(lanes):
        lane.observe(step + 1 + i, {n: v[k] for n, v in m.items()}, names)
    step += len(pending)
    val = None
    if has_val and (epoch % first.config.eval_every_epochs == 0 or step >= first.total_steps):
      t_val = time.perf_counter()
      val = [first.task.scalars(v) for v in _evaluate(g, eval_fn, state, "validation")]
      eval_seconds += time.perf_counter() - t_val
    train_seconds += time.perf_counter() - t_epoch
    improved = [lane.end_epoch(epoch, step, names, None if val is None else val[k],
                               train_seconds / k_runs) for k, lane in enumerate(lanes)]
    if select and any(improved):
      best = _keep_improved(best, state, jnp.asarray(improved))
    if val is not None:
      log(_epoch_line(label, epoch, first, lanes, val, train_seconds))
    if stop is not None and stop.requested:
      raise Interrupted(f"interrupted by {stop.name} in {label or 'a study group'}, epoch "
                        f"{epoch}; a study keeps no checkpoints: nothing was written",
                        stop.exit_code)
  return state, best, step, train_seconds, eval_seconds


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
      "test_details": {} if diverged else task.details(test), "test_examples": test["count"],
      "headline": headline, "headline_goal": task.headline_goal,
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
