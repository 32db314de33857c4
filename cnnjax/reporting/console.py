"""Terminal output: the progress display, results tables and number formatting.

Everything here writes to stderr except what callers print themselves (results tables
go to stdout). On a terminal the progress is a `rich` bar (ETA, running loss and the
task's headline metric); otherwise, or with ``progress="log"``, plain lines.
"""

from __future__ import annotations

import io
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any


def format_value(value: Any) -> str:
  """A number as people read it: 4 decimals below 10, 2 below 1000, then thousands.

  Examples:
    >>> [format_value(v) for v in (0.9583333333333334, 2.468, 69.987, 6579.2, 12, None)]
    ['0.9583', '2.4680', '69.99', '6,579', '12', 'n/a']
  """
  if value is None:
    return "n/a"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if isinstance(value, int):
    return f"{value:,}"
  if not math.isfinite(value):
    return str(value)
  if abs(value) < 10:
    return f"{value:.4f}"
  if abs(value) < 1000:
    return f"{value:.2f}"
  return f"{value:,.0f}"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], *, title: str | None = None,
          align: Sequence[str] | None = None) -> str:
  """Rows as an aligned text table (rendered by rich, without colours); cells via `format_value`.

  Examples:
    >>> print(table([["test accuracy", 0.99444], ["parameters", 67754]], ["result", "value"]))
     result          value
    ────────────────────────
     test accuracy   0.9944
     parameters      67,754
  """
  from rich import box  # pylint: disable=g-import-not-at-top
  from rich.console import Console  # pylint: disable=g-import-not-at-top
  from rich.table import Table  # pylint: disable=g-import-not-at-top

  t = Table(*header, title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=True,
            header_style="", title_style="")
  for i, column in enumerate(t.columns):
    column.justify = (align[i] if align else "left")  # type: ignore[assignment]
  for row in rows:
    t.add_row(*(format_value(c) for c in row))
  buffer = io.StringIO()
  Console(file=buffer, width=200, color_system=None, force_terminal=False,
          highlight=False).print(t)
  return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())


def duration(seconds: float) -> str:
  """``m:ss`` or ``h:mm:ss``; ``?`` when unknown."""
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
  """Training progress: a live bar on a terminal, periodic lines otherwise.

  Args:
    total_steps: steps of the whole run.
    mode: ``auto`` (bar when ``stream`` is a terminal, else ``log``), ``bar``, ``log``
      or ``none``.
    enabled: False silences everything (processes other than the first).
    metrics: the step metrics shown, in order (e.g. loss and the task's headline).
    stream: where to write (stderr).
  """

  def __init__(self, total_steps: int, *, mode: str = "auto", enabled: bool = True,
               metrics: Sequence[str] = ("loss",), stream=None):
    self.stream = stream or sys.stderr
    if mode == "auto":
      mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "log"
    self.mode = mode if enabled else "none"
    self.total = total_steps
    self.metrics = tuple(metrics)
    self._bar = None
    self._task = None
    self._start_time = None
    self._start_step = 0

  def stage(self, text: str) -> None:
    """A start-up stage ("compiling ...") as one line, in every mode but none."""
    self.message(text)

  def start(self, step: int, *, restart: bool = False) -> None:
    """Training starts (or resumes) at ``step``; later calls (each epoch) keep the clock
    unless ``restart`` (after a rollback), so the rate and ETA average over the run."""
    if self._start_time is None or restart:
      self._start_time = time.perf_counter()
      self._start_step = step
    if self.mode == "bar" and self._bar is None:
      from rich.console import Console  # pylint: disable=g-import-not-at-top
      from rich import progress as rp  # pylint: disable=g-import-not-at-top
      self._bar = rp.Progress(
          rp.TextColumn("epoch {task.fields[epoch]}"), rp.BarColumn(),
          rp.MofNCompleteColumn(), rp.TextColumn("{task.fields[stats]}"),
          rp.TextColumn("{task.fields[rate]}"), rp.TextColumn("ETA"), rp.TimeRemainingColumn(),
          console=Console(file=self.stream, highlight=False), redirect_stdout=False,
          redirect_stderr=False, refresh_per_second=12)
      self._task = self._bar.add_task("train", total=self.total, completed=step, epoch=1,
                                      stats="", rate="")
      self._bar.start()

  def _stats(self, metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k} {format_value(metrics[k])}" for k in self.metrics if k in metrics)

  def _rate(self, step: int) -> float:
    elapsed = time.perf_counter() - (self._start_time or time.perf_counter())
    return (step - self._start_step) / elapsed if elapsed > 0 else 0.0

  def advance(self, step: int, epoch: int) -> None:
    """Every step: moves the bar (no device values needed)."""
    if self._bar is not None:
      self._bar.update(self._task, completed=step, epoch=epoch,
                       rate=f"{self._rate(step):.1f} step/s")

  def update(self, step: int, epoch: int, metrics: Mapping[str, float], *,
             log_line: bool = False) -> None:
    """New running metrics; in log mode ``log_line`` also prints a line."""
    if self._bar is not None:
      self._bar.update(self._task, completed=step, epoch=epoch, stats=self._stats(metrics))
    elif self.mode == "log" and log_line:
      rate = self._rate(step)
      eta = (self.total - step) / rate if rate > 0 else float("nan")
      self._write(f"step {step}/{self.total} epoch {epoch} {self._stats(metrics)} "
                  f"{rate:.1f} step/s ETA {duration(eta)}")

  def message(self, text: str) -> None:
    """A line above the bar (or a plain line)."""
    if self._bar is not None:
      self._bar.console.print(text, highlight=False, markup=False)
    elif self.mode != "none":
      self._write(text)

  def _write(self, text: str) -> None:
    self.stream.write(text + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.stop()
      self._bar = None
