"""Stopping cleanly on SIGINT / SIGTERM: a flag the loop reads at safe points.

The handler never raises. An exception raised from a signal handler surfaces wherever
the main thread happens to be, for instance inside a garbage-collection callback of
JAX's, where Python discards it; the run would then go on. So the first signal only
records itself (and says so on stderr), the loop checks `StopRequest.requested` at
safe points (between startup stages, after a step, at an epoch end), and a second
signal ends the process at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
  """Raised at a safe point after a stop request; carries the exit code (128 + signal).

  A BaseException, like KeyboardInterrupt, so that library code catching
  ``Exception`` cannot swallow it.
  """

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


class StopRequest:
  """Records the first SIGINT/SIGTERM; a second one exits the process immediately.

  Example:
    >>> stop = StopRequest()
    >>> stop.requested
    False
    >>> stop.request(signal.SIGTERM)
    >>> stop.requested, stop.exit_code
    (True, 143)
  """

  def __init__(self, stream=None):
    self.signum: int | None = None
    self._stream = stream
    self._previous: dict[int, object] = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  @property
  def exit_code(self) -> int:
    return 128 + int(self.signum or signal.SIGTERM)

  @property
  def name(self) -> str:
    return signal.Signals(self.signum or signal.SIGTERM).name

  def request(self, signum: int) -> None:
    """What the handler does: the first call records ``signum``, a second exits."""
    if self.signum is not None:
      os._exit(128 + signum)
    self.signum = signum

  def _handle(self, signum, frame):
    del frame
    self.request(signum)
    stream = self._stream or sys.stderr
    stream.write(f"\nreceived {signal.Signals(signum).name}: stopping at the next safe point "
                 "(send it again to exit at once)\n")
    stream.flush()

  def install(self) -> "StopRequest":
    """Installs the handler (main thread only; elsewhere signals stay as they are).

    Calling it again re-asserts the handler: `jax.distributed.initialize` installs a
    SIGTERM handler of its own (its preemption notifier), which must not win.
    """
    if threading.current_thread() is not threading.main_thread():
      return self
    for s in SIGNALS:
      previous = signal.signal(s, self._handle)
      self._previous.setdefault(s, previous)
    return self

  def restore(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def check_startup(self) -> None:
    """At a safe point before training: raises `Interrupted` if a stop was requested."""
    if self.requested:
      raise Interrupted(f"interrupted by {self.name} before training started; nothing was "
                        "saved, rerun the same command to start again", self.exit_code)
