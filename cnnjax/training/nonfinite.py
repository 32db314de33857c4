"""What a run does when a step's loss or gradient is not finite: ``config.on_nonfinite``.

* ``stop``: the run ends (`Diverged`).
* ``skip``: the step's update is not applied (the train step keeps the old state and
  counts it in ``state.nonfinite_count``); more than ``max_consecutive_nonfinite``
  skipped steps in a row end the run.
* ``rollback``: the loop restores the last checkpoint and continues with the learning
  rate times ``rollback_lr_factor``; more than ``max_consecutive_nonfinite`` rollbacks
  end the run.

`NonFinitePolicy` applies one run's policy to its steps in order; the loop handles the
`NonFiniteStep` it raises for ``stop`` and ``rollback``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class Diverged(Exception):
  """The loss or gradients became non-finite and the policy ends the run at ``step``."""

  def __init__(self, message: str, step: int | None = None):
    super().__init__(message)
    self.step = step


class NonFiniteStep(Exception):
  """Step ``step`` had a non-finite ``metric`` ("loss" or "gradient") under stop or rollback."""

  def __init__(self, step: int, metric: str):
    super().__init__(f"non-finite {metric} at step {step}")
    self.step, self.metric = step, metric


class NonFinitePolicy:
  """Applies ``mode`` (stop | skip | rollback) to the fetched metrics of each step.

  Example:
    >>> policy = NonFinitePolicy("skip", max_consecutive=1)
    >>> policy.check(1, {"loss": 0.5, "nonfinite": 0.0}) is None
    True
    >>> policy.check(2, {"loss": float("nan"), "nonfinite": 1.0})["metric"]
    'loss'
  """

  def __init__(self, mode: str, *, max_consecutive: int):
    self.mode = mode
    self.max_consecutive = max_consecutive
    self.consecutive = 0
    self.rollbacks = 0

  def check(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """None for a finite step; the event of a skipped step under ``skip``.

    Raises:
      NonFiniteStep: a non-finite step under ``stop`` or ``rollback``.
      Diverged: more than ``max_consecutive`` skipped steps in a row.
    """
    loss_finite = math.isfinite(float(metrics["loss"]))
    if loss_finite and not float(metrics["nonfinite"]):
      self.consecutive = 0
      return None
    self.consecutive += 1
    metric = "gradient" if loss_finite else "loss"
    if self.mode != "skip":
      raise NonFiniteStep(step, metric)
    if self.consecutive > self.max_consecutive:
      raise Diverged(f"training diverged: {metric} non-finite for {self.consecutive} consecutive "
                     f"steps (up to step {step}); on_nonfinite='skip', "
                     f"max_consecutive_nonfinite={self.max_consecutive}", step)
    return self.event(step, metric)

  def event(self, step: int, metric: str) -> dict[str, Any]:
    return {"event": "nonfinite", "step": step, "metric": metric, "policy": self.mode}

  def start_rollback(self, error: NonFiniteStep) -> None:
    """Counts a rollback for ``error``; raises `Diverged` past the allowed number."""
    self.rollbacks += 1
    self.consecutive = 0
    if self.rollbacks > self.max_consecutive:
      raise Diverged(f"training diverged: non-finite {error.metric} at step {error.step} after "
                     f"{self.rollbacks - 1} rollbacks (on_nonfinite='rollback')", error.step)

  def to_dict(self) -> dict[str, int]:
    """The counters, for checkpoint metadata (a resumed run continues them)."""
    return {"consecutive": self.consecutive, "rollbacks": self.rollbacks}

  def load(self, counters: Mapping[str, int]) -> None:
    self.consecutive = int(counters.get("consecutive", 0))
    self.rollbacks = int(counters.get("rollbacks", 0))
