"""What a run leaves for people: metrics files, TensorBoard events, plots, tables."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _jsonable(value):
  if isinstance(value, (np.floating, np.integer)):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them readable
  return value


class MetricsWriter:
  """Appends one JSON object per record to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

  TensorBoard event files are written with tensorboardX, which needs no
  TensorFlow; ``tensorboard --logdir WORKDIR`` displays them.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled and tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)

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
      for k, v in record.items():
        if k not in ("step", "epoch", "split", "event") and isinstance(v, (int, float)):
          self._tb.add_scalar(f"{split}/{k}", v, record["step"])

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


def plot_learning_curves(history: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
  """Loss and accuracy per epoch, train and validation, side by side."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  epochs = [h["epoch"] for h in history]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, metric in zip(axes, ("loss", "accuracy")):
    for split, style in (("train", "-o"), ("val", "-s")):
      values = [h.get(f"{split}_{metric}") for h in history]
      if any(v is not None for v in values):
        ax.plot(epochs, [np.nan if v is None else v for v in values], style, ms=3,
                label="train" if split == "train" else "validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_title("loss")
  axes[1].set_title("accuracy")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_confusion_matrix(confusion: np.ndarray, path: str, title: str = "") -> None:
  """Counts per (true label, prediction), with the counts written in the cells."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  confusion = np.asarray(confusion)
  n = confusion.shape[0]
  size = min(4 + 0.45 * n, 20)
  fig, ax = plt.subplots(figsize=(size, size * 0.85))
  im = ax.imshow(confusion, cmap="Blues")
  fig.colorbar(im, ax=ax, fraction=0.046)
  if n <= 20:
    for i in range(n):
      for j in range(n):
        v = int(confusion[i, j])
        if v:
          ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                  color="white" if v > confusion.max() / 2 else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title or "confusion matrix (test)")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
  """A plain-text table with aligned columns."""
  cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
  return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _fmt(c):
  if isinstance(c, float):
    return f"{c:.4f}" if abs(c) < 1000 else f"{c:,.0f}"
  return str(c)


class Progress:
  """A live bar with ETA on a terminal; plain periodic lines otherwise."""

  def __init__(self, total_steps: int, *, mode: str = "auto", enabled: bool = True,
               stream=None):
    self.stream = stream or sys.stderr
    if mode == "auto":
      mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "log"
    self.mode = mode if enabled else "none"
    self.total = total_steps
    self._start_time = None
    self._start_step = 0

  def start(self, step: int) -> None:
    self._start_time = time.perf_counter()
    self._start_step = step

  def update(self, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
    if self.mode == "none" or self._start_time is None:
      return
    done = step - self._start_step
    elapsed = time.perf_counter() - self._start_time
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    stats = f"loss {metrics.get('loss', float('nan')):.4f} acc {metrics.get('accuracy', float('nan')):.4f}"
    if self.mode == "bar":
      width = 28
      filled = int(width * step / max(self.total, 1))
      bar = "#" * filled + "-" * (width - filled)
      self.stream.write(f"\r[{bar}] {step}/{self.total} epoch {epoch} {stats} "
                        f"{rate:.1f} step/s ETA {_duration(eta)}   ")
    else:
      self.stream.write(f"step {step}/{self.total} epoch {epoch} {stats} "
                        f"{rate:.1f} step/s ETA {_duration(eta)}\n")
    self.stream.flush()

  def message(self, text: str) -> None:
    if self.mode == "bar":
      self.stream.write("\r" + " " * 100 + "\r")
    if self.mode != "none":
      self.stream.write(text + "\n")
      self.stream.flush()

  def close(self) -> None:
    if self.mode == "bar":
      self.stream.write("\n")
      self.stream.flush()


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  m, s = divmod(seconds, 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
