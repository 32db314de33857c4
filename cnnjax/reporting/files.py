"""What a run writes to disk: ``metrics.jsonl``, TensorBoard events, JSON files."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from cnnjax.reporting import events


def _jsonable(value):
  if isinstance(value, (np.floating, np.integer)):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them readable
  return value


class MetricsWriter:
  """Appends one JSON object per record to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

  TensorBoard event files are written by `cnnjax.reporting.events` (no TensorFlow);
  ``tensorboard --logdir WORKDIR`` displays them.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled and tensorboard:
      self._tb = events.EventWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops records past ``step``, and any test record (a resumed run rewrites them identically).

    The test evaluation is written only when a run completes; one on disk in a
    run being resumed comes from a process killed before its summary was saved.
    """
    if not self.enabled or not os.path.exists(self.path):
      return

    def keep(record):
      return record.get("step", 0) <= step and record.get("split") != "test"

    with open(self.path) as f:
      kept = [line for line in f if line.strip() and keep(json.loads(line))]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, record: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {k: _jsonable(v) for k, v in record.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      split = record.get("split", "train")
      scalars = {f"{split}/{k}": float(v) for k, v in record.items()
                 if k not in ("step", "epoch", "split", "event")
                 and isinstance(v, (int, float)) and not isinstance(v, bool)}
      if scalars:
        self._tb.scalars(int(record["step"]), scalars)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` atomically: readers see the old file or the new one, never half."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
    f.write("\n")
  os.replace(tmp, path)
