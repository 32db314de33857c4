"""The PNGs of a single run: learning curves and a confusion matrix (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def pyplot():
  """matplotlib's pyplot on the file-only Agg backend (imported on first use: ~0.5 s)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save(fig, path: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  pyplot().close(fig)


def integer_ticks(ax) -> None:
  """Whole numbers only on the x axis (epochs, steps)."""
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_learning_curves(history: Sequence[Mapping[str, Any]], path: str, title: str = "", *,
                         metrics: Sequence[str] = ("loss", "accuracy")) -> None:
  """One panel per metric (per epoch, train and validation)."""
  plt = pyplot()
  epochs = [h["epoch"] for h in history]
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for split, style, label in (("train", "-o", "train"), ("val", "-s", "validation")):
      values = [h.get(f"{split}_{metric}") for h in history]
      if any(v is not None for v in values):
        ax.plot(epochs, [np.nan if v is None else v for v in values], style, ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(metric)
    integer_ticks(ax)
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  save(fig, path)


def plot_confusion_matrix(confusion: np.ndarray, path: str, title: str = "") -> None:
  """Counts per (true label, prediction), with the counts written in the cells."""
  plt = pyplot()
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
  save(fig, path)
