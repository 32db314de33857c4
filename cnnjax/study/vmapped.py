"""Training a group of runs that differ only in values as ONE vmapped program.

The runs of a group share model, data, budget and optimizer *structure*; they may differ
in seed (initialisation, batch order, augmentation and dropout keys), learning rate and
loss (name and options). Their train states are stacked along a leading variant axis
``[K, ...]`` and one `jax.jit(jax.vmap(train_step))` is compiled for the group:

* the learning rate is a value in the optimizer state: the group's optax chain is built
  with a base rate of 1 and each variant's state gets its rate as the chain's run-time
  multiplier (`cnnjax.optimizers.set_learning_rate_scale`), so ``lr = schedule_1(count) *
  lr_k``, the same float32 product a run built with ``lr_k`` computes;
* the loss is chosen per variant by `lax.switch` over the group's distinct losses (each
  built by `cnnjax.losses.for_classification` exactly as a single run builds it); under
  vmap the switch evaluates every loss on every variant's logits and selects, which is
  cheap next to the network and lets any losses share a group;
* each variant's batch comes from its own seed's `Dataset.train_batches(epoch)`, stacked
  to ``[K, B, ...]``; evaluation batches (seed-independent) are shared.

Each variant therefore follows the same arithmetic as
`cnnjax.training.loop.train_and_evaluate` (``parallel="none"``) for its config: keys
``init_rng, train_rng = cnnjax.training.state.run_keys(seed)``, the same batches, keys and eval.
A variant whose loss becomes non-finite is marked diverged; vmap lanes never mix, so its
NaNs cannot reach the other variants.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from cnnjax import losses as losses_lib
from cnnjax import optimizers
from cnnjax.data import augment as augment_lib
from cnnjax.data import load as load_data
from cnnjax.models import get_model
from cnnjax.study.grid import group_key
from cnnjax.training import steps as steps_lib
from cnnjax.training.state import TrainState, create_train_state, num_params, run_keys
from cnnjax.training.validation import validate_config

__all__ = ["GroupRun", "build_group", "measure_vmap", "train_group"]

Log = Callable[[str], None]


def _microbatches(config: ml_collections.ConfigDict, num_params: int) -> int:
  # The split a single run resolves (microbatches=0 means auto, see steps.py).
  from cnnjax.models import has_batch_norm  # pylint: disable=g-import-not-at-top
  return steps_lib.resolve_microbatches(
      config.microbatches, per_device_batch=config.batch_size,
      has_batch_norm=has_batch_norm(config.model), backend=jax.default_backend(),
      num_params=num_params)


def _loss_key(config: ml_collections.ConfigDict) -> str:
  return repr(sorted(config.loss.to_dict().items()))


# Model variables by (model, seed, input shape): the un-jitted Flax init costs seconds on
# CPU, and the runs of a study share a handful of seeds across many groups.
_INIT_CACHE: dict[tuple[str, int, tuple[int, ...]], Any] = {}


def _train_state(init_rng, seed: int, model, tx, input_shape, ema_decay: float) -> TrainState:
  """`create_train_state(init_rng, model, tx, input_shape, ema_decay=...)`, init cached."""
  key = (repr(model), int(seed), tuple(input_shape))
  if key not in _INIT_CACHE:
    state = create_train_state(init_rng, model, tx, input_shape, ema_decay=ema_decay)
    _INIT_CACHE[key] = {"params": state.params, "batch_stats": state.batch_stats}
    return state
  v = _INIT_CACHE[key]
  # The same construction as create_train_state, from the cached variables.
  return TrainState.create(
      apply_fn=model.apply, params=v["params"], tx=tx, batch_stats=v["batch_stats"],
      ema_params=jax.tree.map(jnp.copy, v["params"]) if ema_decay > 0 else None,
      ema_decay=float(ema_decay))


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class GroupRun:
  """The compiled pieces and initial stacked state of one group (see `build_group`).

  Attributes:
    configs: the K run configs.
    datasets: ``{seed: Dataset}``.
    total_steps, steps_per_epoch, num_epochs: the shared budget.
    state: the stacked `TrainState` ``[K, ...]``.
    train_rngs: ``[K]`` keys (each run's ``train_rng``).
    loss_index: int32 ``[K]``, each run's position in ``loss_fns``.
    loss_fns: the group's distinct per-example losses.
    train_fn: jitted ``(state, batch [K,B,...], rngs, loss_index) -> (state, metrics [K])``.
    eval_fn: jitted ``(state, batch [B,...], loss_index) -> summed metrics [K, ...]``.
    single_train_fn: ``(loss_fn) -> jitted single-run step`` (for timing comparisons).
  """

  def __init__(self, **kw):
    self.__dict__.update(kw)


def build_group(configs: Sequence[ml_collections.ConfigDict]) -> GroupRun:
  """Validates that ``configs`` can share one program and builds it (nothing trained yet).

  Raises:
    ValueError: an invalid config, an empty group, configs that differ in more than
      seed / learning rate / loss, or ``parallel`` other than "none"/"auto" on 1 device.
  """
  if not configs:
    raise ValueError("a study group needs at least one config, got none")
  for c in configs:
    validate_config(c)
  keys = {group_key(c) for c in configs}
  if len(keys) > 1:
    raise ValueError("configs of one group may differ only in seed, optimizer.learning_rate "
                     f"and loss; got {len(keys)} different structures")
  c0 = configs[0]
  if c0.on_nonfinite == "rollback":
    # A rollback restores a checkpoint of one run: not expressible per lane. Treated as
    # "stop" (the run is marked diverged), which is documented in docs/studies.md.
    pass

  datasets = {}
  for c in configs:
    if c.seed not in datasets:
      datasets[c.seed] = load_data(c)
  data0 = datasets[c0.seed]
  info = data0.info
  steps_per_epoch = data0.steps_per_epoch
  total_steps = c0.num_train_steps or c0.num_epochs * steps_per_epoch
  num_epochs = math.ceil(total_steps / steps_per_epoch)

  loss_fns: list[steps_lib.LossFn] = []
  loss_pos: dict[str, int] = {}
  for c in configs:
    k = _loss_key(c)
    if k not in loss_pos:
      loss_pos[k] = len(loss_fns)
      options = {n: v for n, v in c.loss.items() if n != "name"}
      loss_fns.append(losses_lib.for_classification(
          c.loss.name, num_classes=info.num_classes, **options))
  loss_index = jnp.asarray([loss_pos[_loss_key(c)] for c in configs], jnp.int32)

  def select_loss(index: jax.Array) -> steps_lib.LossFn:
    if len(loss_fns) == 1:
      return loss_fns[0]
    return lambda logits, labels: lax.switch(index, loss_fns, logits, labels)

  model = get_model(c0.model, num_classes=info.num_classes, dtype=c0.dtype,
                    dropout_rate=c0.dropout_rate)
  group_opt = ml_collections.ConfigDict(c0.optimizer.to_dict())
  group_opt.learning_rate = 1.0
  tx = optimizers.make_optimizer(group_opt, total_steps)

  states, rngs = [], []
  for c in configs:
    lr = c.optimizer.learning_rate
    lr = optimizers.default_learning_rate(c.optimizer.name) if lr is None else lr
    init_rng, train_rng = run_keys(c.seed)
    s = _train_state(init_rng, c.seed, model, tx, info.image_shape, c.optimizer.ema_decay)
    states.append(s.replace(opt_state=optimizers.set_learning_rate_scale(s.opt_state, lr)))
    rngs.append(train_rng)

  augment_fn = augment_lib.per_example_fn(c0.augment)
  microbatches = _microbatches(c0, num_params(states[0].params))
  skip = c0.on_nonfinite == "skip"

  def one_train(state, batch, rng, index):
    return steps_lib.train_step(state, batch, rng, loss_fn=select_loss(index),
                                augment_fn=augment_fn, microbatches=microbatches,
                                skip_nonfinite=skip)

  def one_eval(state, batch, index):
    return steps_lib.eval_step(state, batch, loss_fn=select_loss(index),
                               num_classes=info.num_classes)

  def single_train_fn(index: int):
    return jax.jit(functools.partial(
        steps_lib.train_step, loss_fn=loss_fns[index], augment_fn=augment_fn,
        microbatches=microbatches, skip_nonfinite=skip), donate_argnums=0)

  return GroupRun(
      configs=list(configs), datasets=datasets, data=data0, info=info,
      total_steps=total_steps, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs,
      state=_stack(states), single_states=states, train_rngs=jnp.stack(rngs),
      loss_index=loss_index, loss_fns=loss_fns,
      train_fn=jax.jit(jax.vmap(one_train), donate_argnums=0),
      eval_fn=jax.jit(jax.vmap(one_eval, in_axes=(0, None, 0))),
      single_train_fn=single_train_fn)


def _stacked_batches(g: GroupRun, epoch: int):
  """Yields ``[K, B, ...]`` batches of ``epoch``: row k from run k's own seed."""
  seeds = [c.seed for c in g.configs]
  iters = {s: g.datasets[s].train_batches(epoch) for s in dict.fromkeys(seeds)}
  for per_seed in zip(*iters.values()):
    by_seed = dict(zip(iters, per_seed))
    yield {k: np.stack([by_seed[s][k] for s in seeds]) for k in per_seed[0]}


def _evaluate(g: GroupRun, state, split: str) -> dict[str, np.ndarray]:
  total = None
  for batch in g.data.eval_batches(split):
    m = g.eval_fn(state, batch, g.loss_index)
    total = m if total is None else jax.tree.map(jnp.add, total, m)
  total = jax.device_get(total)
  count = np.asarray(total["count"], np.float64)
  return {"loss": np.asarray(total["loss_sum"], np.float64) / count,
          "accuracy": np.asarray(total["correct"], np.float64) / count,
          "count": count}


def train_group(configs: Sequence[ml_collections.ConfigDict], *, log: Log | None = None,
                label: str = "", target_accuracy: float | None = None) -> list[dict[str, Any]]:
  """Trains the K runs of ``configs`` together; returns one result dict per run, in order.

  Args:
    configs: run configs differing only in seed, optimizer.learning_rate and loss.
    log: called with one progress line per epoch (None = silent).
    label: a name for the group in progress lines.
    target_accuracy: validation accuracy whose first reach is reported per run
      (``steps_to_target``, ``epochs_to_target``, ``seconds_to_target``).

  Returns:
    Per run: ``history`` (per epoch: epoch, step, train_loss, train_accuracy, val_loss,
    val_accuracy, seconds), ``test_loss``, ``test_accuracy``, ``best_val_accuracy``,
    ``best_epoch``, ``final_val_accuracy``, ``diverged``, ``diverged_step``,
    ``steps_to_target``, ``epochs_to_target``, ``seconds_to_target``, ``compile_seconds``,
    ``train_seconds`` (the group's, shared by its K runs), ``group_size``.
    ``seconds`` and ``seconds_to_target`` are the group's wall time divided by K: a run's
    share of the shared program.
  """
  log = log or (lambda _: None)
  t0 = time.perf_counter()
  g = build_group(configs)
  K = len(configs)
  c0 = configs[0]
  state = g.state
  # Compile ahead of time so that compilation is timed apart from training.
  probe = next(_stacked_batches(g, 0))
  train_fn = g.train_fn.lower(state, probe, g.train_rngs, g.loss_index).compile()
  probe_eval = next(g.data.eval_batches("test"))
  eval_fn = g.eval_fn.lower(state, probe_eval, g.loss_index).compile()
  g.eval_fn = eval_fn
  compile_seconds = time.perf_counter() - t0

  has_val = g.data.num_examples("validation") > 0
  history: list[list[dict[str, Any]]] = [[] for _ in range(K)]
  diverged_step: list[int | None] = [None] * K
  consecutive = np.zeros(K, np.int64)
  best = [(None, None)] * K
  reached: list[tuple[int, int, float] | None] = [None] * K
  step = 0
  train_seconds = 0.0
  for epoch in range(1, g.num_epochs + 1):
    t_epoch = time.perf_counter()
    pending = []
    for batch in _stacked_batches(g, epoch - 1):
      state, metrics = train_fn(state, batch, g.train_rngs, g.loss_index)
      pending.append({k: metrics[k] for k in ("loss", "accuracy", "nonfinite")})
      step += 1
      if step >= g.total_steps:
        break
    fetched = jax.device_get(pending)
    first = step - len(fetched) + 1
    sums = np.zeros((K, 2))
    counts = np.zeros(K)
    for i, m in enumerate(fetched):
      loss = np.asarray(m["loss"], np.float64)
      bad = (np.asarray(m["nonfinite"]) > 0) | ~np.isfinite(loss)
      for k in range(K):
        if diverged_step[k] is not None:
          continue
        if bad[k]:
          consecutive[k] += 1
          if c0.on_nonfinite != "skip" or consecutive[k] > c0.max_consecutive_nonfinite:
            diverged_step[k] = first + i
          continue
        consecutive[k] = 0
        sums[k] += (float(m["loss"][k]), float(m["accuracy"][k]))
        counts[k] += 1
    val = None
    if has_val and (epoch % c0.eval_every_epochs == 0 or step >= g.total_steps):
      val = _evaluate(g, state, "validation")
    train_seconds += time.perf_counter() - t_epoch
    for k in range(K):
      n = max(counts[k], 1)
      record = {"epoch": epoch, "step": step,
                "train_loss": sums[k, 0] / n if counts[k] else float("nan"),
                "train_accuracy": sums[k, 1] / n if counts[k] else float("nan"),
                "seconds": train_seconds / K}
      if val is not None:
        va, vl = float(val["accuracy"][k]), float(val["loss"][k])
        record.update(val_loss=vl, val_accuracy=va)
        if diverged_step[k] is None:
          if best[k][0] is None or va > best[k][0]:
            best[k] = (va, epoch)
          if (target_accuracy is not None and reached[k] is None
              and va >= target_accuracy):
            reached[k] = (step, epoch, train_seconds / K)
      history[k].append(record)
    if val is not None:
      ok = [k for k in range(K) if diverged_step[k] is None]
      accs = val["accuracy"][ok] if ok else np.array([np.nan])
      log(f"{label} epoch {epoch}/{g.num_epochs} ({train_seconds:.1f}s): val accuracy "
          f"mean {np.mean(accs):.4f} [{np.min(accs):.4f}, {np.max(accs):.4f}]"
          + (f", {K - len(ok)} diverged" if len(ok) < K else ""))

  test = _evaluate(g, state, "test")
  results = []
  for k in range(K):
    last = history[k][-1] if history[k] else {}
    diverged = diverged_step[k] is not None
    results.append({
        "diverged": diverged,
        "diverged_step": diverged_step[k],
        "test_accuracy": None if diverged else float(test["accuracy"][k]),
        "test_loss": None if diverged else float(test["loss"][k]),
        "test_examples": int(test["count"][k]),
        "final_val_accuracy": None if diverged else last.get("val_accuracy"),
        "best_val_accuracy": best[k][0],
        "best_epoch": best[k][1],
        "steps_to_target": reached[k][0] if reached[k] else None,
        "epochs_to_target": reached[k][1] if reached[k] else None,
        "seconds_to_target": reached[k][2] if reached[k] else None,
        "history": history[k],
        "steps": step,
        "compile_seconds": compile_seconds,
        "train_seconds": train_seconds,
        "group_size": K,
    })
  return results


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
  K = len(configs)
  batches = []
  epoch = 0
  while len(batches) < steps + 1:
    batches += list(_stacked_batches(g, epoch))
    epoch += 1
  batches = batches[:steps + 1]

  t = time.perf_counter()
  train_fn = g.train_fn.lower(g.state, batches[0], g.train_rngs, g.loss_index).compile()
  vmapped_compile = time.perf_counter() - t
  state = train_fn(g.state, batches[0], g.train_rngs, g.loss_index)[0]
  jax.block_until_ready(state)
  t = time.perf_counter()
  for b in batches[1:]:
    state, m = train_fn(state, b, g.train_rngs, g.loss_index)
  jax.block_until_ready((state, m))
  vmapped = time.perf_counter() - t
  log(f"vmapped: {K} runs x {steps} steps in {vmapped:.2f}s (compile {vmapped_compile:.1f}s)")

  t = time.perf_counter()
  single = {}
  index = np.asarray(g.loss_index)
  for k in range(K):
    if index[k] not in single:
      fn = g.single_train_fn(int(index[k]))
      single[index[k]] = fn.lower(g.single_states[k], {n: v[k] for n, v in batches[0].items()},
                                  g.train_rngs[k]).compile()
  sequential_compile = time.perf_counter() - t
  sequential = 0.0
  for k in range(K):
    fn = single[index[k]]
    s = jax.tree.map(jnp.copy, g.single_states[k])
    s = fn(s, {n: v[k] for n, v in batches[0].items()}, g.train_rngs[k])[0]
    jax.block_until_ready(s)
    t = time.perf_counter()
    for b in batches[1:]:
      s, m = fn(s, {n: v[k] for n, v in b.items()}, g.train_rngs[k])
    jax.block_until_ready((s, m))
    sequential += time.perf_counter() - t
  log(f"sequential: {K} runs x {steps} steps in {sequential:.2f}s "
      f"(compile {sequential_compile:.1f}s)")
  return {"k": K, "steps": steps, "vmapped_seconds": vmapped, "sequential_seconds": sequential,
          "speedup": sequential / vmapped, "vmapped_compile_seconds": vmapped_compile,
          "sequential_compile_seconds": sequential_compile}
