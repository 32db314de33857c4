"""Imports a study needs only later, started in a background thread before it trains.

A study spends its first seconds building the first run and compiling its programs; XLA
compiles with the GIL released, so a second thread can import meanwhile what would
otherwise be imported on the critical path: grain (the training-batch iterator, ~0.5 s
with the orbax modules it pulls in), scipy.stats (the report's Welch tests) and pyplot
(the plots), ~1.5 s together on the 2-core machine of the README. pyplot's first figure
also sets up lazily (fonts, the math-text parser of log-axis tick labels): a small figure
of the same kinds of artists is drawn into memory here, so the study's first plot does not
pay for it (~0.3 s).
"""

from __future__ import annotations

import importlib
import io
import threading

__all__ = ["MODULES", "start"]

# In the order the study needs them.
MODULES = ("grain", "scipy.stats", "matplotlib.pyplot")


def _warm_up(plt) -> None:
  fig, ax = plt.subplots(figsize=(2, 2))
  ax.plot([1, 2], [0.1, 1.0], "o-", label="a")
  ax.fill_between([1, 2], [0.05, 0.5], [0.2, 2.0], alpha=0.2)
  ax.set_yscale("log")
  ax.set_title("a", fontsize=8)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(io.BytesIO(), format="png", dpi=110)
  plt.close(fig)


def _import_all() -> None:
  for name in MODULES:
    if name == "matplotlib.pyplot":
      from cnnjax.reporting.plots import pyplot  # pylint: disable=g-import-not-at-top
      _warm_up(pyplot())   # pyplot() selects the file-only Agg backend first
    else:
      importlib.import_module(name)


def start() -> threading.Thread:
  """Starts importing `MODULES` in a daemon thread; returns it (join before plotting:
  a module is then loaded, or its import error is raised again by the caller's own
  import).

  Example (what it imports):
    >>> MODULES
    ('grain', 'scipy.stats', 'matplotlib.pyplot')
  """
  thread = threading.Thread(target=_import_all, name="cnnjax-preload", daemon=True)
  thread.start()
  return thread
