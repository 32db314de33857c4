"""`train_and_evaluate`: the loop around the pure steps, owning every side effect."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnjax import losses as losses_lib
from cnnjax import optimizers
from cnnjax import parallel as parallel_lib
from cnnjax import reporting
from cnnjax.data import augment as augment_lib
from cnnjax.data import load as load_data
from cnnjax.models import get_model, has_batch_norm
from cnnjax.training import manifest as manifest_lib
from cnnjax.training import steps as steps_lib
from cnnjax.training.checkpoint import Checkpointer
from cnnjax.training.state import create_train_state, num_params, run_keys
from cnnjax.training.validation import validate_config, validate_workdir


class RunError(RuntimeError):
  """A run that cannot start or continue; the message is one line for the user."""


class Interrupted(BaseException):
  """Raised after a clean stop on SIGTERM/SIGINT; carries the exit code.

  A BaseException, like KeyboardInterrupt, so that library code catching
  ``Exception`` while it is raised (from a signal handler) cannot swallow it.
  """

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


class Diverged(Exception):
  """Raised when training became non-finite and the policy says stop."""


# Keys that change how a run is displayed, not what it computes: a resumed
# run may change them freely.
_PRESENTATION_KEYS = {"progress", "log_every_steps"}
# Keys that say where a run executes, not what it computes: a checkpoint
# restores in any parallel mode and device count (docs/parallel.md). bn_sync is
# not among them: it changes what BatchNorm normalizes over.
_PLACEMENT_KEYS = {"parallel", "distributed"}


def _differing_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
  keys = []
  for k in sorted(set(old) | set(new)):
    path = f"{prefix}{k}"
    if path in _PRESENTATION_KEYS or path in _PLACEMENT_KEYS:
      continue
    a, b = old.get(k, "<missing>"), new.get(k, "<missing>")
    if isinstance(a, dict) and isinstance(b, dict):
      keys += _differing_keys(a, b, path + ".")
    elif a != b:
      keys.append(f"{path} ({a!r} -> {b!r})")
  return keys


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON types (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


@dataclasses.dataclass
class _Signals:
  """First SIGINT/SIGTERM asks the loop to stop after the current step; a second exits at once."""

  received: int | None = None
  # Until the first step there is nothing to save, so a signal stops the run
  # at once instead of waiting for data loading and compilation to finish.
  training: bool = False

  def install(self):
    if threading_is_main():
      self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

  def _handle(self, signum, frame):
    if self.received is not None:
      os._exit(128 + signum)
    self.received = signum
    if not self.training:
      raise Interrupted(f"interrupted by {signal.Signals(signum).name} before training started; "
                        "nothing to save, rerun the same command to start again", 128 + signum)
    print(f"\nreceived {signal.Signals(signum).name}: stopping after this step "
          "(send it again to exit at once)", flush=True)

  def restore(self):
    for s, h in getattr(self, "_old", {}).items():
      signal.signal(s, h)


def threading_is_main() -> bool:
  import threading  # pylint: disable=g-import-not-at-top
  return threading.current_thread() is threading.main_thread()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Trains ``config`` in ``workdir``, resuming from its checkpoints if any.

  Writes into ``workdir``: config.json, manifest.json, metrics.jsonl,
  summary.json, plots/, tensorboard/, checkpoints/. Returns the summary.

  Raises:
    ValueError: an invalid config (one-line message naming key and value).
    RunError: a workdir that holds a different run, or cannot be written.
    Interrupted: the run stopped cleanly on a signal (summary written).
    Diverged: the loss became non-finite under ``on_nonfinite="stop"``.
  """
  validate_config(config)
  workdir = os.path.abspath(workdir)
  resolved = config_to_dict(config)
  par = parallel_lib.Parallel(config.parallel, config.bn_sync)

  # Refuse a workdir of another run before touching anything in it.
  config_path = os.path.join(workdir, "config.json")
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      old = json.load(f)
    diff = _differing_keys(old, resolved)
    if diff and not allow_config_change:
      raise RunError(
          f"workdir {workdir} holds a run with a different config ({'; '.join(diff)}); "
          "use another --workdir, or --allow_config_change to continue it with the new config")
    if not diff and os.path.exists(summary_path):
      with open(summary_path) as f:
        summary = json.load(f)
      if summary.get("status") == "completed":
        summary["reprinted"] = True
        return summary
  validate_workdir(workdir)
  signals = _Signals()
  signals.install()
  try:
    return _train(config, workdir, resolved, par, signals, config_path, summary_path)
  finally:
    signals.restore()


def _train(config, workdir, resolved, par, signals, config_path, summary_path) -> dict[str, Any]:
  """The body of `train_and_evaluate` once the config and workdir are accepted."""
  main = par.is_main_process
  data = load_data(config)
  info = data.info
  par.check_batch_size(config.batch_size)
  par.check_batch_size(config.eval_batch_size, "eval_batch_size")
  steps_per_epoch = data.steps_per_epoch
  total_steps = config.num_train_steps or config.num_epochs * steps_per_epoch
  num_epochs = math.ceil(total_steps / steps_per_epoch)

  loss_options = {k: v for k, v in config.loss.items() if k != "name"}
  loss_fn = losses_lib.for_classification(
      config.loss.name, num_classes=info.num_classes, **loss_options)
  model = get_model(config.model, num_classes=info.num_classes, dtype=config.dtype,
                    dropout_rate=config.dropout_rate, **par.model_kwargs())
  tx = optimizers.make_optimizer(config.optimizer, total_steps)
  skip = config.on_nonfinite == "skip"

  init_rng, train_rng = run_keys(config.seed)
  state = create_train_state(init_rng, model, tx, info.image_shape,
                             ema_decay=config.optimizer.ema_decay)
  # The train step donates the state's buffers, so the rollback keeps its own
  # host copy of the initial state (only that policy needs it) and restores
  # against shapes, not buffers.
  initial = jax.device_get(state) if config.on_nonfinite == "rollback" else None
  template = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
      if isinstance(x, jax.Array) else x, state)
  n_params = num_params(state.params)

  microbatches = steps_lib.resolve_microbatches(
      config.microbatches, per_device_batch=config.batch_size // par.num_devices,
      has_batch_norm=has_batch_norm(config.model), backend=jax.default_backend(),
      num_params=n_params)
  train_fn = par.compile_train(functools.partial(
      steps_lib.train_step, loss_fn=loss_fn,
      augment_fn=augment_lib.per_example_fn(config.augment), microbatches=microbatches, skip_nonfinite=skip))
  eval_fn = par.compile_eval(functools.partial(
      steps_lib.eval_step, loss_fn=loss_fn, num_classes=info.num_classes))

  if main:
    os.makedirs(workdir, exist_ok=True)
    reporting.write_json(config_path, resolved)
    reporting.write_json(os.path.join(workdir, "manifest.json"),
                         manifest_lib.build(resolved, par, workdir))
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
  writer = reporting.MetricsWriter(workdir, enabled=main)
  progress = reporting.Progress(total_steps, mode=config.progress, enabled=main)

  meta = {"history": [], "epoch_sums": {}, "best_val_accuracy": None, "best_epoch": None,
          "events": [], "train_seconds": 0.0, "lr_scale": 1.0}
  step = 0
  restored = checkpointer.restore_latest(template)
  if restored is not None:
    step, state, meta = restored
    if main:
      # Said even with progress="none": a resumed run must never look like a fresh one.
      print(f"resuming from step {step} of {total_steps} ({workdir})", file=sys.stderr, flush=True)
    writer.truncate_after(step)

  state = par.put_state(state)
  pindex, pcount = jax.process_index(), jax.process_count()

  # Compile once, ahead of time, so compilation is measured apart from training.
  t0 = time.perf_counter()
  probe_batch = par.put_batch(next(data.train_batches(0, process_index=pindex, process_count=pcount)))
  train_fn = par.precompile(train_fn, state, probe_batch, train_rng)
  probe_eval = par.put_batch(next(data.eval_batches("test", process_index=pindex,
                                                    process_count=pcount)))
  eval_fn = par.precompile(eval_fn, state, probe_eval)
  compile_seconds = time.perf_counter() - t0

  def evaluate(split: str) -> dict[str, Any]:
    total = None
    for batch in data.eval_batches(split, process_index=pindex, process_count=pcount):
      m = eval_fn(state, par.put_batch(batch))
      total = m if total is None else jax.tree.map(jnp.add, total, m)
    total = par.fetch(total)
    count = float(total["count"])
    return {"loss": float(total["loss_sum"]) / count, "accuracy": float(total["correct"]) / count,
            "count": int(count), "confusion": np.asarray(total["confusion"])}

  def save(val_accuracy=None):
    checkpointer.save(step, par.get_state(state), meta, val_accuracy)

  signals.training = True

  def stop_requested(sync_point: bool) -> bool:
    """Whether to stop for a signal. With several processes only at sync points,
    where every process asks together: the checkpoint that follows is collective,
    and a process stopping alone would leave the others waiting in it."""
    if pcount == 1:
      return signals.received is not None
    return sync_point and par.any_process(signals.received is not None)

  pending: list[Any] = []   # device metrics of steps not yet fetched
  last_log: dict[str, float] = {}
  consecutive_nonfinite = 0
  rollbacks = 0
  has_val = data.num_examples("validation") > 0

  def flush() -> None:
    """Fetches pending step metrics; applies the non-finite policy to each step in order."""
    nonlocal consecutive_nonfinite
    if not pending:
      return
    fetched = [par.fetch(m) for m in pending]
    first = step - len(pending) + 1
    pending.clear()
    sums = meta["epoch_sums"]
    window = {"loss": 0.0, "accuracy": 0.0, "n": 0}
    for i, m in enumerate(fetched):
      s = first + i
      bad = bool(m["nonfinite"]) or not math.isfinite(float(m["loss"]))
      if bad:
        consecutive_nonfinite += 1
        what = "loss" if not math.isfinite(float(m["loss"])) else "gradient"
        event = {"event": "nonfinite", "step": s, "metric": what, "policy": config.on_nonfinite}
        if config.on_nonfinite == "skip":
          if consecutive_nonfinite > config.max_consecutive_nonfinite:
            raise Diverged(f"training diverged: {what} non-finite for {consecutive_nonfinite} "
                           f"consecutive steps (up to step {s}); on_nonfinite='skip', "
                           f"max_consecutive_nonfinite={config.max_consecutive_nonfinite}")
          meta["events"].append(event)
          writer.write({"step": s, "epoch": (s - 1) // steps_per_epoch + 1, "split": "train",
                        **event})
          continue
        raise _NonFinite(s, what)
      consecutive_nonfinite = 0
      for k in ("loss", "accuracy"):
        sums[k] = sums.get(k, 0.0) + float(m[k])
        window[k] += float(m[k])
      sums["n"] = sums.get("n", 0) + 1
      window["n"] += 1
      last_log.update({k: float(v) for k, v in m.items()})
    if window["n"]:
      last_log["loss"] = window["loss"] / window["n"]
      last_log["accuracy"] = window["accuracy"] / window["n"]

  status = "running"
  summary: dict[str, Any] = {}
  train_seconds = meta["train_seconds"]
  try:
    while step < total_steps:
      epoch = step // steps_per_epoch + 1  # 1-based for people
      t_epoch = time.perf_counter()
      progress.start(step)
      try:
        for batch in data.train_batches(epoch - 1, start_step=step % steps_per_epoch,
                                        process_index=pindex, process_count=pcount):
          state, metrics = train_fn(state, par.put_batch(batch), train_rng)
          step += 1
          pending.append(metrics)
          if step % config.log_every_steps == 0 or step == total_steps:
            flush()
            writer.write({"step": step, "epoch": epoch, "split": "train",
                          "loss": last_log.get("loss"), "accuracy": last_log.get("accuracy"),
                          "learning_rate": last_log.get("learning_rate"),
                          "grad_norm": last_log.get("grad_norm")})
            progress.update(step, epoch, last_log)
          epoch_end = step >= total_steps or step % steps_per_epoch == 0
          # At an epoch's last step the interrupt waits for the epoch-end
          # checkpoint below, so every checkpoint at such a step has its epoch
          # closed (history, validation) and one step is never saved twice.
          if not epoch_end and stop_requested(step % config.log_every_steps == 0):
            flush()
            meta["train_seconds"] = train_seconds + time.perf_counter() - t_epoch
            save()
            raise _interrupted(signals.received or signal.SIGTERM, step, total_steps)
          if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
              and not epoch_end):
            flush()
            meta["train_seconds"] = train_seconds + time.perf_counter() - t_epoch
            save()
          if epoch_end:
            break
        flush()
      except _NonFinite as nf:
        event = {"event": "nonfinite", "step": nf.step, "metric": nf.metric,
                 "policy": config.on_nonfinite}
        meta["events"].append(event)
        writer.write({"step": nf.step, "epoch": epoch, "split": "train", **event})
        if config.on_nonfinite == "stop":
          raise Diverged(f"training diverged: the {nf.metric} became non-finite at step {nf.step} "
                         f"(on_nonfinite='stop'); the last good checkpoint is kept in "
                         f"{checkpointer.directory}")
        # rollback: back to the last good checkpoint with a smaller learning rate.
        rollbacks += 1
        if rollbacks > config.max_consecutive_nonfinite:
          raise Diverged(f"training diverged: non-finite {nf.metric} at step {nf.step} after "
                         f"{rollbacks - 1} rollbacks (on_nonfinite='rollback')")
        # The scale compounds over rollbacks, also when two of them return to
        # the same checkpoint (whose meta holds the scale it was saved with).
        lr_scale = meta.get("lr_scale", 1.0) * config.rollback_lr_factor
        back = checkpointer.restore_latest(template)
        events = meta["events"]
        if back is None:
          step, state, meta = 0, initial, {**meta, "history": [], "epoch_sums": {},
                                            "best_val_accuracy": None, "best_epoch": None}
        else:
          step, state, meta = back
        meta["events"] = events
        meta["lr_scale"] = lr_scale
        state = state.replace(opt_state=optimizers.set_learning_rate_scale(
            state.opt_state, lr_scale))
        state = par.put_state(state)
        pending.clear()
        consecutive_nonfinite = 0
        writer.write({"step": step, "epoch": epoch, "split": "train", "event": "rollback",
                      "lr_scale": meta["lr_scale"], "from_step": nf.step})
        progress.message(f"non-finite {nf.metric} at step {nf.step}: rolled back to step {step}, "
                         f"learning rate x{meta['lr_scale']:g}")
        continue
      train_seconds += time.perf_counter() - t_epoch

      # End of an epoch (or of the budget).
      sums, meta["epoch_sums"] = meta["epoch_sums"], {}
      n = max(sums.get("n", 0), 1)
      record = {"epoch": epoch, "step": step, "train_loss": sums.get("loss", float("nan")) / n,
                "train_accuracy": sums.get("accuracy", float("nan")) / n}
      val_acc = None
      if has_val and (epoch % config.eval_every_epochs == 0 or step >= total_steps):
        val = evaluate("validation")
        val_acc = val["accuracy"]
        record.update(val_loss=val["loss"], val_accuracy=val_acc)
        writer.write({"step": step, "epoch": epoch, "split": "validation",
                      "loss": val["loss"], "accuracy": val_acc})
        if meta["best_val_accuracy"] is None or val_acc > meta["best_val_accuracy"]:
          meta["best_val_accuracy"], meta["best_epoch"] = val_acc, epoch
      meta["history"].append(record)
      meta["train_seconds"] = train_seconds
      save(val_acc)
      if stop_requested(True):
        raise _interrupted(signals.received or signal.SIGTERM, step, total_steps)
      if val_acc is not None:
        progress.message(f"epoch {epoch}/{num_epochs}: train loss {record['train_loss']:.4f} "
                         f"acc {record['train_accuracy']:.4f} | val loss {record['val_loss']:.4f} "
                         f"acc {val_acc:.4f}")
    status = "completed"
  except Interrupted:
    status = "interrupted"
    raise
  except Diverged as e:
    status = "diverged"
    meta.setdefault("events", []).append({"event": "stopped", "reason": str(e)})
    raise
  finally:
    progress.close()
    # Every process builds the summary and takes part in the test evaluation
    # (a collective with several processes); only the main process writes.
    if status != "running":
      summary = _summary(
          status=status, config=config, meta=meta, step=step, total_steps=total_steps,
          steps_per_epoch=steps_per_epoch, compile_seconds=compile_seconds,
          train_seconds=train_seconds, n_params=n_params, par=par, workdir=workdir)
      if status == "completed":
        test = evaluate("test")
        summary.update(test_accuracy=test["accuracy"], test_loss=test["loss"],
                       test_examples=test["count"])
    if status != "running" and main:
      if status == "completed":
        writer.write({"step": step, "epoch": num_epochs, "split": "test",
                      "loss": test["loss"], "accuracy": test["accuracy"]})
        reporting.plot_confusion_matrix(
            test["confusion"], os.path.join(workdir, "plots", "confusion_matrix.png"),
            f"{config.model} on {config.dataset} test: accuracy {test['accuracy']:.4f}")
      if meta["history"]:
        reporting.plot_learning_curves(
            meta["history"], os.path.join(workdir, "plots", "learning_curves.png"),
            f"{config.model} / {config.loss.name} / {config.optimizer.name} on {config.dataset}")
      reporting.write_json(summary_path, summary)
    writer.close()
    checkpointer.close()
  return summary


def _interrupted(signum: int, step: int, total_steps: int) -> Interrupted:
  return Interrupted(
      f"interrupted by {signal.Signals(signum).name} at step {step} of {total_steps}; "
      "checkpoint saved, rerun the same command to resume", 128 + signum)


class _NonFinite(Exception):

  def __init__(self, step: int, metric: str):
    super().__init__(f"non-finite {metric} at step {step}")
    self.step, self.metric = step, metric


def _summary(*, status, config, meta, step, total_steps, steps_per_epoch, compile_seconds,
             train_seconds, n_params, par, workdir) -> dict[str, Any]:
  history = meta["history"]
  last = history[-1] if history else {}
  return {
      "status": status,
      "workdir": workdir,
      "dataset": config.dataset,
      "model": config.model,
      "loss": config.loss.name,
      "optimizer": config.optimizer.name,
      "seed": config.seed,
      "epochs": len(history),
      "steps": step,
      "total_steps": total_steps,
      "steps_per_epoch": steps_per_epoch,
      "batch_size": config.batch_size,
      "num_params": n_params,
      "final_train_loss": last.get("train_loss"),
      "final_train_accuracy": last.get("train_accuracy"),
      "final_val_accuracy": last.get("val_accuracy"),
      "best_val_accuracy": meta["best_val_accuracy"],
      "best_epoch": meta["best_epoch"],
      "history": history,
      "events": meta["events"],
      "compile_seconds": compile_seconds,
      "train_seconds": train_seconds,
      "examples_per_sec": step * config.batch_size / train_seconds if train_seconds else None,
      "parallel": par.mode,
      "devices": [str(d) for d in par.devices],
      "process_count": jax.process_count(),
      "versions": manifest_lib.package_versions(),
  }


def results_table(summary: dict[str, Any]) -> str:
  """The short table printed at the end of a run."""
  rows = [
      ["test accuracy", summary.get("test_accuracy")],
      ["test loss", summary.get("test_loss")],
      ["best val accuracy", f"{summary.get('best_val_accuracy')} (epoch {summary.get('best_epoch')})"],
      ["epochs / steps", f"{summary['epochs']} / {summary['steps']}"],
      ["parameters", f"{summary['num_params']:,}"],
      ["compile seconds", summary["compile_seconds"]],
      ["train seconds", summary["train_seconds"]],
      ["examples / second", summary.get("examples_per_sec")],
      ["status", summary["status"]],
  ]
  rows = [[k, "n/a" if v is None else v] for k, v in rows]
  return reporting.format_table(rows, header=["result", "value"])
