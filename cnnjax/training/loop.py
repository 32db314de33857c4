"""`train_and_evaluate`: the loop around the pure steps, owning every side effect.

The loop reads as its parts, the methods of `_Trainer`: setup (`_build`, `_compile`,
`_restore`), one epoch (`_epoch`, with `_flush` applying the non-finite policy to each
fetched step in order), the end of an epoch (`_end_epoch`: records, validation,
checkpoint), the non-finite policy (`cnnjax.training.nonfinite`, with `_rollback`), and
finalization (`_finish`: test evaluation, summary, plots). What is learned and how it
is scored comes from the run's task; the loop never looks at a label.

Heavy libraries (tfds, grain, orbax, matplotlib) are imported only once the config and
the workdir are accepted, so bad input fails in well under a second.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from cnnjax import config as config_lib
from cnnjax import parallel as parallel_lib
from cnnjax import reporting
from cnnjax.training import tracking
from cnnjax.training.nonfinite import Diverged, NonFinitePolicy, NonFiniteStep
from cnnjax.training.signals import Interrupted, StopRequest
from cnnjax.training.workdir import RunError, completed_summary, validate_workdir

__all__ = ["Diverged", "Interrupted", "RunError", "config_to_dict", "results_table",
           "train_and_evaluate"]

# How often (seconds) the progress bar's running metrics are refreshed between log steps.
_DISPLAY_SECONDS = 0.25
# The layout of a checkpoint's bookkeeping; checkpoints of another layout are refused.
META_FORMAT = 2


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON types (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False,
                       stop: StopRequest | None = None) -> dict[str, Any]:
  """Trains ``config`` in ``workdir``, resuming from its checkpoints if any.

  Writes into ``workdir``: config.json, manifest.json, metrics.jsonl, summary.json,
  plots/, tensorboard/, checkpoints/. Returns the summary (with ``"reprinted": True``
  when ``workdir`` already holds this run, completed).

  Args:
    config: the run config (validated here, once).
    workdir: the run directory.
    allow_config_change: continue a run of another config in ``workdir``.
    stop: a `StopRequest` the caller installed already (e.g. at program start); by
      default one is installed for the duration of the call.

  Raises:
    ValueError: an invalid config (one-line message naming key and value).
    RunError: a workdir that holds a different run, or cannot be written.
    Interrupted: the run stopped cleanly on a signal (summary written).
    Diverged: the loss became non-finite and the policy ends the run.
  """
  config_lib.validate(config)
  workdir = os.path.abspath(workdir)
  resolved = config_to_dict(config)
  summary = completed_summary(workdir, resolved, allow_config_change=allow_config_change)
  if summary is not None:
    return {**summary, "reprinted": True}
  validate_workdir(workdir)
  own = stop is None
  stop = (stop or StopRequest()).install()
  try:
    return _Trainer(config, workdir, resolved, stop).train()
  finally:
    if own:
      stop.restore()


class _Trainer:
  """One run of `train_and_evaluate`: its compiled steps, state and bookkeeping."""

  def __init__(self, config, workdir: str, resolved: dict[str, Any], stop: StopRequest):
    self.config, self.workdir, self.stop = config, workdir, stop
    self.t_start = time.perf_counter()
    self.par = parallel_lib.Parallel(config.parallel, config.bn_sync)
    self.main = self.par.is_main_process
    self.pindex, self.pcount = jax.process_index(), jax.process_count()
    self.progress = reporting.Progress(0, mode=config.progress, enabled=self.main)
    self.checkpointer = self.writer = None
    self._build()
    try:
      self._restore()
      self._compile()
      self._build_diagnostics()
      self.stop.check_startup()
      self._open_outputs(resolved)
    except BaseException:
      # A stop request or an error during start-up: release the files and threads.
      self._close()
      raise
    self.setup_seconds = time.perf_counter() - self.t_start

  # -- setup ------------------------------------------------------------------

  def _build(self) -> None:
    from cnnjax.training import build  # pylint: disable=g-import-not-at-top
    c = self.config
    self.progress.stage(f"loading {c.dataset}, building {c.model}")
    self.run = run = build.build_run(c, parallel=self.par)
    self.stop.check_startup()
    self.task, self.data = run.task, run.data
    self.train_names = ("loss", *self.task.train_metric_names)
    self.progress.total = run.total_steps
    self.progress.metrics = ("loss", self.task.headline)
    # The train step donates the state's buffers, so the rollback keeps its own
    # host copy of the initial state (only that policy needs it).
    self.initial = jax.device_get(run.state) if c.on_nonfinite == "rollback" else None
    self.template = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.Array) else x, run.state)
    self.policy = NonFinitePolicy(c.on_nonfinite, max_consecutive=c.max_consecutive_nonfinite)
    self.has_val = self.data.num_examples("validation") > 0
    self.pending: list[Any] = []   # device metrics of steps not yet fetched
    self.last: dict[str, float] = {}
    self.window = tracking.Means()
    self.diverged_step: int | None = None
    self.last_save = time.perf_counter()
    self.last_validation: dict[str, Any] | None = None  # of the current state
    from cnnjax.data import corruption  # pylint: disable=g-import-not-at-top
    self.data_record = corruption.dataset_record(self.data)

  def _checkpointer(self):
    from cnnjax.training import checkpoint  # pylint: disable=g-import-not-at-top
    return checkpoint.Checkpointer(os.path.join(self.workdir, "checkpoints"),
                                   keep=self.config.keep_checkpoints,
                                   goal=self.task.headline_goal)

  def _restore(self) -> None:
    self.step, state, self.restored = 0, self.run.state, False
    self._load_meta({"format": META_FORMAT, "history": [], "epoch_sums": {}, "best_value": None,
                     "best_epoch": None, "events": [], "train_seconds": 0.0, "lr_scale": 1.0,
                     "policy": {}, "diagnostics": [], "diagnostics_seconds": 0.0})
    # Nothing is created in the workdir before compilation has succeeded: a run stopped
    # during start-up leaves no trace.
    if os.path.isdir(os.path.join(self.workdir, "checkpoints")):
      self.checkpointer = self._checkpointer()
      restored = self.checkpointer.restore_latest(self.template)
      if restored is not None:
        self.step, state, meta = restored
        if meta.get("format") != META_FORMAT:
          raise RunError(f"workdir {self.workdir} holds checkpoints of an older cnnjax "
                         f"(format {meta.get('format', 1)}, expected {META_FORMAT}); use a "
                         "new --workdir")
        self._load_meta(meta)
        self.restored = True
        if self.main:
          # Said even with progress="none": a resumed run must never look like a fresh one.
          print(f"resuming from step {self.step} of {self.run.total_steps} ({self.workdir})",
                file=sys.stderr, flush=True)
    self.state = self.par.put_state(state)
    self.stop.check_startup()

  def _open_outputs(self, resolved: dict[str, Any]) -> None:
    """The workdir's files, once the run has compiled and is about to train."""
    from cnnjax.training import manifest  # pylint: disable=g-import-not-at-top
    if self.main:
      os.makedirs(self.workdir, exist_ok=True)
      reporting.write_json(os.path.join(self.workdir, "config.json"), resolved)
      reporting.write_json(os.path.join(self.workdir, "manifest.json"),
                           manifest.build(resolved, self.par, self.workdir))
      reporting.write_json(os.path.join(self.workdir, "data.json"), self.data_record)
    if self.checkpointer is None:
      self.checkpointer = self._checkpointer()
    self.writer = reporting.MetricsWriter(self.workdir, enabled=self.main)
    if self.restored:
      self.writer.truncate_after(self.step)

  def _close(self) -> None:
    for resource in (self.writer, self.checkpointer):
      if resource is not None:
        resource.close()

  def _compile(self) -> None:
    """Compiles both steps once, ahead of time, so compilation is timed apart from training."""
    self.progress.stage("compiling the train and eval steps")
    t0 = time.perf_counter()
    first = next(self.data.train_batches(0, process_index=self.pindex, process_count=self.pcount))
    self.train_fn = self.par.precompile(self.par.compile_train(self.run.train_step()),
                                        self.state, self.par.put_batch(first), self.run.train_rng)
    self.stop.check_startup()
    probe = next(self._eval_batches("test"))
    self.eval_fn = self.par.precompile(self.par.compile_eval(self.run.eval_step()), self.state,
                                       self.par.put_batch(probe))
    self.compile_seconds = time.perf_counter() - t0
    self.stop.check_startup()

  def _load_meta(self, meta: dict[str, Any]) -> None:
    self.meta = meta
    self.epoch_means = tracking.Means(meta["epoch_sums"])
    self.best = tracking.Best(self.task.headline_goal, meta["best_value"], meta["best_epoch"])
    self.train_seconds = meta["train_seconds"]
    self.policy.load(meta.get("policy", {}))

  def _meta(self) -> dict[str, Any]:
    return {**self.meta, "epoch_sums": self.epoch_means.to_dict(), "best_value": self.best.value,
            "best_epoch": self.best.epoch, "train_seconds": self.train_seconds,
            "policy": self.policy.to_dict()}

  def _eval_batches(self, split: str):
    return self.data.eval_batches(split, process_index=self.pindex, process_count=self.pcount)

  # -- training ---------------------------------------------------------------

  def train(self) -> dict[str, Any]:
    status = "running"
    self.stop.check_startup()
    if self.task.evaluate_at_start and "start" not in self.meta:
      # The untrained model's test result (e.g. a generator's Fréchet distance at step 0),
      # kept in the checkpoint metadata so a resumed run reports the same.
      self.meta["start"] = self.task.scalars(self._evaluate("test"))
    try:
      self._diagnose()
      while self.step < self.run.total_steps:
        try:
          self._epoch()
        except NonFiniteStep as e:
          self._nonfinite(e)
          continue
        self._end_epoch()
      status = "completed"
    except Interrupted:
      status = "interrupted"
      raise
    except Diverged as e:
      status = "diverged"
      if self.diverged_step is None:
        self.diverged_step = e.step
      self.meta["events"].append({"event": "stopped", "reason": str(e)})
      raise
    finally:
      self.progress.close()
      # Every process takes part in the test evaluation (a collective with several
      # processes); only the main process writes.
      if status != "running":
        self.summary = self._finish(status)
      self._close()
    return self.summary

  def _epoch(self) -> None:
    run = self.run
    self.epoch = self.step // run.steps_per_epoch + 1  # 1-based for people
    t_epoch = time.perf_counter()
    self.progress.start(self.step)
    self.last_display = t_epoch
    batches = self.data.train_batches(self.epoch - 1, start_step=self.step % run.steps_per_epoch,
                                      process_index=self.pindex, process_count=self.pcount)
    for batch in batches:
      self.state, metrics = self.train_fn(self.state, self.par.put_batch(batch), run.train_rng)
      self.step += 1
      self.pending.append(metrics)
      t_epoch += self._diagnose()  # diagnostics are timed apart from training
      epoch_end = self.step >= run.total_steps or self.step % run.steps_per_epoch == 0
      self._after_step(epoch_end, t_epoch)
      if epoch_end:
        break
    self._flush()
    self.train_seconds += time.perf_counter() - t_epoch

  def _after_step(self, epoch_end: bool, t_epoch: float) -> None:
    c, step = self.config, self.step
    log_point = step % c.log_every_steps == 0 or step == self.run.total_steps
    now = time.perf_counter()
    if log_point:
      self._flush()
      self.writer.write({"step": step, "epoch": self.epoch, "split": "train",
                         **self.window.means(), "learning_rate": self.last.get("learning_rate"),
                         "grad_norm": self.last.get("grad_norm")})
      self.writer.flush()
      self.progress.update(step, self.epoch, self.window.means(), log_line=True)
      self.window = tracking.Means()
    elif (self.pcount == 1 and self.progress.mode == "bar"
          and now - self.last_display > _DISPLAY_SECONDS):
      # The newest step is probably still running: fetch only those before it. (With
      # several processes the policy is applied only where all of them flush together.)
      self._flush(keep_last=1)
      self.progress.update(step, self.epoch, {**self.last, **self.window.means()})
      self.last_display = now
    self.progress.advance(step, self.epoch)
    # At an epoch's last step the interrupt waits for the epoch-end checkpoint, so
    # every checkpoint at such a step has its epoch closed and no step is saved twice.
    if not epoch_end and self._stop_requested(step % c.log_every_steps == 0):
      self._flush()
      self._save(train_seconds=self.train_seconds + now - t_epoch)
      raise self._interrupted()
    if c.checkpoint_every_steps and step % c.checkpoint_every_steps == 0 and not epoch_end:
      self._flush()
      self._save(train_seconds=self.train_seconds + now - t_epoch)

  def _flush(self, keep_last: int = 0) -> None:
    """Fetches pending step metrics and applies the non-finite policy to each step in order."""
    n = len(self.pending) - keep_last
    if n <= 0:
      return
    first = self.step - len(self.pending) + 1
    fetched = [self.par.fetch(m) for m in self.pending[:n]]
    del self.pending[:n]
    for i, m in enumerate(fetched):
      try:
        event = self.policy.check(first + i, m)
      except Diverged:
        self.diverged_step = first + i
        raise
      if event is not None:  # a skipped step
        self.meta["events"].append(event)
        self.writer.write({"step": first + i, "epoch": self.epoch, "split": "train", **event})
        continue
      scalars = {k: float(m[k]) for k in self.train_names}
      self.epoch_means.add(scalars)
      self.window.add(scalars)
      self.last = {k: float(v) for k, v in m.items()}

  def _stop_requested(self, sync_point: bool) -> bool:
    """Whether to stop for a signal. With several processes only at sync points, where
    every process asks together: the checkpoint that follows is collective, and a
    process stopping alone would leave the others waiting in it."""
    if self.pcount == 1:
      return self.stop.requested
    return sync_point and self.par.any_process(self.stop.requested)

  def _interrupted(self) -> Interrupted:
    return Interrupted(f"interrupted by {self.stop.name} at step {self.step} of "
                       f"{self.run.total_steps}; checkpoint saved, rerun the same command to "
                       "resume", self.stop.exit_code)

  def _save(self, *, best: float | None = None, train_seconds: float | None = None) -> None:
    meta = self._meta()
    if train_seconds is not None:
      meta["train_seconds"] = train_seconds
    self.checkpointer.save(self.step, self.par.get_state(self.state), meta, best)
    self.last_save = time.perf_counter()

  def _epoch_end_save_due(self, improved: bool, stopping: bool) -> bool:
    """Whether an epoch end saves: a new best, the last epoch, a stop, or enough time since
    the last save. Resuming from any checkpoint gives the same result, so skipping one only
    risks repeating work after a kill; each save costs ~40 ms of orbax bookkeeping. Under
    ``rollback`` every epoch end saves: the checkpoint a rollback returns to must not
    depend on the clock."""
    due = (improved or stopping or self.step >= self.run.total_steps
           or self.config.on_nonfinite == "rollback"
           or time.perf_counter() - self.last_save >= self.config.checkpoint_every_seconds)
    # Saves are collective with several processes: they must agree (clocks differ).
    return self.par.any_process(due) if self.pcount > 1 else due

  def _end_epoch(self) -> None:
    c, run, epoch = self.config, self.run, self.epoch
    means, self.epoch_means = self.epoch_means.means(), tracking.Means()
    val, improved = None, False
    if self.has_val and (epoch % c.eval_every_epochs == 0 or self.step >= run.total_steps):
      final = self._evaluate("validation")
      val = self.task.scalars(final)
      self.last_validation = val
      if self.main:
        self.task.epoch_report(os.path.join(self.workdir, "plots"), epoch, final)
      self.writer.write({"step": self.step, "epoch": epoch, "split": "validation", **val})
      improved = self.best.update(val[self.task.headline], epoch)
    record = tracking.epoch_record(epoch, self.step, means, self.train_names, val)
    self.meta["history"].append(record)
    self.writer.flush()
    stopping = self._stop_requested(True)
    if self._epoch_end_save_due(improved, stopping):
      self._save(best=val[self.task.headline] if improved else None)
    if stopping:
      raise self._interrupted()
    if val is not None:
      shown = self.progress.metrics
      train = _pairs({k: record[f"train_{k}"] for k in shown if f"train_{k}" in record})
      self.progress.message(f"epoch {epoch}/{run.num_epochs}  train {train}  val "
                            + _pairs({k: val[k] for k in shown if k in val}))

  def _evaluate(self, split: str, validation: dict[str, Any] | None = None) -> dict[str, Any]:
    sums = tracking.summed(self.eval_fn, self.state, self._eval_batches(split),
                           self.par.put_batch)
    return self.task.finalize(self.par.fetch(sums), validation)

  def _test(self) -> dict[str, Any]:
    """The test evaluation, calibrated on the validation result of the same state."""
    if not self.has_val:
      return self._evaluate("test", {})
    if self.last_validation is None:  # resumed after the last epoch's validation
      self.last_validation = self.task.scalars(self._evaluate("validation"))
    return self._evaluate("test", self.last_validation)

  # -- diagnostics (config.diagnostics) --------------------------------------

  def _build_diagnostics(self) -> None:
    """Builds and compiles `cnnjax.training.diagnostics.Diagnostics` when enabled."""
    self.diagnostics, self.diagnostics_compile_seconds = None, 0.0
    settings = self.config.diagnostics
    if not settings.enabled:
      return
    from cnnjax.training import diagnostics  # pylint: disable=g-import-not-at-top
    if self.pcount > 1:
      raise RunError(f"diagnostics run in one process; this run has {self.pcount} (set "
                     "diagnostics.enabled=False)")
    t0 = time.perf_counter()
    ghost = (self.par.num_devices if self.par.mode == "pmap" and self.par.bn_sync == "per_device"
             else None)
    self.diagnostics = diagnostics.Diagnostics(self.run, settings, bn_ghost_batches=ghost)
    self.diagnostics.compile(self.par.get_state(self.state))
    self.diagnostics_compile_seconds = time.perf_counter() - t0

  def _diagnose(self) -> float:
    """Diagnostics of the current state when due (step 0, every ``every_steps``, the last
    step); returns the seconds they took (0 when not due)."""
    records = self.meta.setdefault("diagnostics", [])
    d, step = self.diagnostics, self.step
    due = step % self.config.diagnostics.every_steps == 0 or step >= self.run.total_steps
    if d is None or not due or (records and records[-1]["step"] == step):
      return 0.0
    jax.block_until_ready(self.state)  # the steps already dispatched are training's time
    t0 = time.perf_counter()
    values = d(self.par.get_state(self.state))
    seconds = time.perf_counter() - t0
    self.meta["diagnostics_seconds"] = self.meta.get("diagnostics_seconds", 0.0) + seconds
    record = {"step": step, "epoch": math.ceil(step / self.run.steps_per_epoch),
              "split": "diagnostics", **values, "seconds": seconds}
    records.append(record)
    self.writer.write(record)
    return seconds

  # -- non-finite steps -------------------------------------------------------

  def _nonfinite(self, e: NonFiniteStep) -> None:
    event = self.policy.event(e.step, e.metric)
    self.meta["events"].append(event)
    self.writer.write({"step": e.step, "epoch": self.epoch, "split": "train", **event})
    if self.config.on_nonfinite == "stop":
      self.diverged_step = e.step
      steps = self.checkpointer.steps()
      kept = (f"the last checkpoint before it (step {steps[-1]}) is in "
              f"{self.checkpointer.directory}" if steps else "no checkpoint was saved before it")
      raise Diverged(f"training diverged: the {e.metric} became non-finite at step {e.step} "
                     f"(on_nonfinite='stop'); {kept}", e.step)
    self._rollback(e)

  def _rollback(self, e: NonFiniteStep) -> None:
    """Back to the last checkpoint (or the start) with a smaller learning rate."""
    self.policy.start_rollback(e)
    # The factor compounds over rollbacks, also when two of them return to the same
    # checkpoint (whose meta holds the factor it was saved with).
    lr_scale = self.meta.get("lr_scale", 1.0) * self.config.rollback_lr_factor
    events = self.meta["events"]
    back = self.checkpointer.restore_latest(self.template)
    if back is None:
      step, state, meta = 0, self.initial, {**self.meta, "history": [], "epoch_sums": {},
                                            "best_value": None, "best_epoch": None}
    else:
      step, state, meta = back
    # Wall time already spent stays counted; the policy's own counters go on as well.
    policy, seconds = self.policy.to_dict(), self.train_seconds
    self._load_meta({**meta, "events": events, "lr_scale": lr_scale, "policy": policy,
                     "train_seconds": seconds})
    self.step = step
    self.state = self.par.put_state(self.run.with_learning_rate_scale(state, lr_scale))
    self.pending.clear()
    self.window, self.last = tracking.Means(), {}
    self.epoch = step // self.run.steps_per_epoch + 1
    self.writer.write({"step": step, "epoch": self.epoch, "split": "train", "event": "rollback",
                       "lr_scale": lr_scale, "from_step": e.step})
    self.progress.message(f"non-finite {e.metric} at step {e.step}: rolled back to step {step}, "
                          f"learning rate x{lr_scale:g}")
    self.progress.start(step, restart=True)

  # -- the end ----------------------------------------------------------------

  def _finish(self, status: str) -> dict[str, Any]:
    from cnnjax.reporting import curvature_plots, plots  # pylint: disable=g-import-not-at-top
    summary = _summary(self, status)
    test = None
    if status == "completed":
      test = self._test()
      summary.update({f"test_{k}": v for k, v in self.task.scalars(test).items()},
                     test_examples=test["count"], test_details=self.task.details(test))
    # The task's own lines of the results table (reprinted runs show them too).
    summary["report_rows"] = [list(row) for row in self.task.summary_rows(summary)]
    if not self.main:
      return summary
    c, plot_dir = self.config, os.path.join(self.workdir, "plots")
    title = f"{c.model} on {c.dataset}"
    if test is not None:
      self.writer.write({"step": self.step, "epoch": self.run.num_epochs, "split": "test",
                         **self.task.scalars(test)})
      self.task.report(plot_dir, test, title, self._report_examples())
    if self.meta.get("diagnostics"):
      curvature_plots.plot_diagnostics(
          self.meta["diagnostics"], os.path.join(plot_dir, "diagnostics.png"),
          f"{c.model} / {c.loss.name} / {c.optimizer.name} on {c.dataset}",
          history=self.meta["history"])
    if self.meta["history"]:
      plots.plot_learning_curves(self.meta["history"], os.path.join(plot_dir, "learning_curves.png"),
                                 f"{c.model} / {c.loss.name} / {c.optimizer.name} on {c.dataset}",
                                 metrics=self.task.curve_metrics)
    reporting.write_json(os.path.join(self.workdir, "summary.json"), summary)
    return summary


  def _report_examples(self) -> dict[str, Any] | None:
    """The first ``task.report_examples`` test examples with the model's outputs (host)."""
    n = min(self.task.report_examples, self.data.num_examples("test"))
    if not n:
      return None
    import functools  # pylint: disable=g-import-not-at-top
    from cnnjax.training import steps  # pylint: disable=g-import-not-at-top
    examples = {k: v[:n] for k, v in self.data.split_arrays("test").items()}
    predict = jax.jit(functools.partial(steps.predict, apply_fn=self.run.eval_model.apply))
    examples["outputs"] = jax.device_get(predict(self.par.fetch(self.state), examples["image"]))
    return examples


def _pairs(values: dict[str, float]) -> str:
  return " ".join(f"{k} {reporting.format_value(v)}" for k, v in values.items())


def _summary(t: _Trainer, status: str) -> dict[str, Any]:
  from cnnjax.training import manifest  # pylint: disable=g-import-not-at-top
  c, run, history = t.config, t.run, t.meta["history"]
  last, headline = (history[-1] if history else {}), t.task.headline
  steps = t.diverged_step if t.diverged_step is not None else t.step
  return {
      "status": status, "workdir": t.workdir, "task": c.task, "dataset": c.dataset,
      "model": c.model, "loss": c.loss.name, "optimizer": c.optimizer.name, "seed": c.seed,
      "headline": headline, "epochs": len(history), "steps": steps,
      "total_steps": run.total_steps, "steps_per_epoch": run.steps_per_epoch,
      "batch_size": c.batch_size, "num_params": run.num_params,
      **{f"final_train_{k}": last.get(f"train_{k}") for k in t.train_names},
      f"final_val_{headline}": last.get(f"val_{headline}"),
      f"best_val_{headline}": t.best.value, "best_epoch": t.best.epoch,
      **{f"start_test_{k}": v for k, v in t.meta.get("start", {}).items()},
      "history": history, "events": t.meta["events"],
      "setup_seconds": t.setup_seconds, "compile_seconds": t.compile_seconds,
      "train_seconds": t.train_seconds,
      "examples_per_sec": steps * c.batch_size / t.train_seconds if t.train_seconds else None,
      "parallel": t.par.mode, "devices": [str(d) for d in t.par.devices],
      "process_count": jax.process_count(), "versions": manifest.package_versions(),
      "data": _data_summary(t.data_record),
      # Steps up to the end (or the divergence) whose non-finite update the train step
      # skipped (on_nonfinite="skip"); the state's nonfinite_count also counts steps that
      # were dispatched after a divergence.
      "skipped_steps": sum(1 for e in t.meta["events"]
                           if e.get("event") == "nonfinite" and e.get("policy") == "skip"),
      **({"diverged_step": t.diverged_step} if t.diverged_step is not None else {}),
      **_diagnostics_summary(t),
  }


def _diagnostics_summary(t: _Trainer) -> dict[str, Any]:
  """The diagnostics' cost (apart from train_seconds) and their last values, when enabled."""
  if t.diagnostics is None:
    return {}
  records = t.meta.get("diagnostics", [])
  last = records[-1] if records else {}
  # Where the sharpness sat in the second half of training, against its threshold (2/lr for
  # gradient descent): about 1 at the edge of stability.
  late = [r for r in records if r["step"] >= t.run.total_steps / 2
          and isinstance(r.get("sharpness"), float) and r.get("sharpness_threshold")]
  plateau = {}
  if late:
    plateau = {"sharpness_late_median": float(np.median([r["sharpness"] for r in late])),
               "sharpness_late_ratio": float(np.median([r["sharpness"] / r["sharpness_threshold"]
                                                        for r in late]))}
  return {"diagnostics_seconds": t.meta.get("diagnostics_seconds", 0.0),
          "diagnostics_compile_seconds": t.diagnostics_compile_seconds,
          "diagnostics_evaluations": len(records),
          "diagnostics_examples": t.diagnostics.num_examples,
          "diagnostics_batch_stats_mode": t.config.diagnostics.batch_stats_mode,
          **{f"final_{k}": v for k, v in last.items()
             if k not in ("step", "epoch", "split", "seconds", "learning_rate")}, **plateau}


def _data_summary(record: dict[str, Any]) -> dict[str, Any]:
  from cnnjax.data import corruption  # pylint: disable=g-import-not-at-top
  return corruption.summary_of(record)


def results_table(summary: dict[str, Any]) -> str:
  """The short table printed at the end of a run."""
  h = summary.get("headline", "accuracy")
  best = summary.get(f"best_val_{h}")
  rows = [
      [f"test {h}", summary.get(f"test_{h}")],
      ["test loss", summary.get("test_loss")],
      # The task's own lines (reprinted runs show them too).
      *[list(row) for row in summary.get("report_rows", [])],
      [f"best val {h}", "n/a" if best is None else
       f"{reporting.format_value(best)} (epoch {summary.get('best_epoch')})"],
      ["epochs / steps", f"{summary['epochs']} / {summary['steps']}"],
      ["parameters", summary["num_params"]],
      ["compile seconds", summary["compile_seconds"]],
      ["train seconds", summary["train_seconds"]],
      *([["diagnostics seconds", summary["diagnostics_seconds"]],
         ["final sharpness", summary.get("final_sharpness")]]
        if "diagnostics_seconds" in summary else []),
      ["examples / second", summary.get("examples_per_sec")],
      ["status", summary["status"]],
  ]
  if summary.get("skipped_steps"):
    rows.insert(-1, ["skipped steps (non-finite)", summary["skipped_steps"]])
  return reporting.table(rows, ["result", "value"])
