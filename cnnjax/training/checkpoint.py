"""Orbax checkpoints of the train state plus the loop's own bookkeeping.

Each checkpoint holds two items: ``state`` (the TrainState pytree, saved from
one un-replicated copy so it restores in any parallel mode and device count)
and ``meta`` (JSON: epoch, history, best validation result, ...). Orbax
writes into a temporary directory and renames it when complete, so a crash
never leaves a half-written checkpoint in place of the last good one.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from typing import Any

import jax

import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

_LOG = logging.getLogger(__name__)
BEST_METRIC = "best"


class Checkpointer:
  """Keeps the last ``keep`` checkpoints and the best one by the task's headline metric.

  A checkpoint carries the metric only when it set a new best (strictly better), so
  the kept best is always the newest such checkpoint: on a tie the earlier epoch,
  the one the run's summary names, stays.

  Args:
    directory: where the checkpoints live.
    keep: how many of the latest to keep.
    goal: ``"max"`` or ``"min"``, the direction of the headline metric.
  """

  def __init__(self, directory: str | epath.Path, *, keep: int, goal: str = "max"):
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(
            get_metric_fn=lambda m: m[BEST_METRIC], reverse=goal == "min", n=1,
            keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        # Writing happens in a background thread after the arrays are copied to
        # host memory, so training continues while the files are written.
        enable_async_checkpointing=True,
        cleanup_tmp_directories=True,
    )
    self.directory = epath.Path(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))

  def save(self, step: int, state, meta: dict[str, Any], best: float | None = None):
    """Saves in the background; ``best``: the new best headline value this step reached."""
    metrics = None if best is None else {BEST_METRIC: float(best)}
    self._manager.save(
        step,
        # A copy: the save completes in the background while the loop keeps
        # updating its bookkeeping (the epoch sums are mutated in place).
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(copy.deepcopy(meta))),
        metrics=metrics,
        force=True,
    )

  def wait(self):
    """Blocks until every started save is committed on disk."""
    self._manager.wait_until_finished()

  def steps(self) -> list[int]:
    self._manager.wait_until_finished()
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def restore_latest(self, template):
    """The newest checkpoint that restores, as ``(step, state, meta)``, or None.

    A checkpoint that fails to restore (truncated or corrupt files) is
    reported with a warning and the previous one is tried. Once a good one is
    found, the unreadable newer ones are moved to ``<directory>.unreadable/``
    (kept for inspection, never deleted): the resumed run passes their steps
    again and must be able to save there.
    """
    unreadable = []
    for step in reversed(self.steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - any failure means "not a good checkpoint"
        _LOG.warning("checkpoint %s is unreadable (%s: %s); trying the previous one",
                     self.directory / str(step), type(e).__name__, str(e).splitlines()[0][:200])
        print(f"warning: checkpoint {self.directory / str(step)} is unreadable "
              f"({type(e).__name__}); trying the previous one", file=sys.stderr, flush=True)
        unreadable.append(step)
        continue
      self._set_aside(unreadable)
      return step, restored["state"], dict(restored["meta"])
    self._set_aside(unreadable)
    return None

  def _set_aside(self, steps: list[int]) -> None:
    if not steps or jax.process_index() != 0:
      return
    aside = epath.Path(str(self.directory) + ".unreadable")
    aside.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
      (self.directory / str(step)).rename(target)
      print(f"warning: moved unreadable checkpoint {self.directory / str(step)} to {target}",
            file=sys.stderr, flush=True)
    self._manager.reload()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
