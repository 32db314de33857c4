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


def _reliability_panel(ax, bins: Mapping[str, Sequence[float]], label: str) -> None:
  count = np.asarray(bins["count"], np.float64)
  acc = np.asarray(bins["accuracy"], np.float64)
  conf = np.asarray(bins["confidence"], np.float64)
  n = len(count)
  centers = (np.arange(n) + 0.5) / n
  filled = count > 0
  ax.bar(centers[filled], acc[filled], width=1.0 / n, edgecolor="C0", color="C0", alpha=0.7,
         label="accuracy")
  ax.bar(centers[filled], (conf - acc)[filled], bottom=acc[filled], width=1.0 / n,
         color="C3", alpha=0.3, edgecolor="C3", label="gap to confidence")
  ax.plot([0, 1], [0, 1], "k--", lw=1)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("confidence (top-class probability)")
  ax.set_ylabel("accuracy")
  ax.set_title(label, fontsize=10)
  ax.legend(loc="upper left", fontsize=8)
  share = ax.twinx()
  share.plot(centers[filled], count[filled] / max(count.sum(), 1), "o:", color="C2", ms=3)
  share.set_ylabel("fraction of examples", color="C2")
  share.set_ylim(0, 1)


def plot_reliability(final: Mapping[str, Any], path: str, title: str = "") -> None:
  """Reliability diagrams of a classification result, before and after temperature scaling."""
  plt = pyplot()
  panels = [("reliability", f"T = 1: ECE {final['ece']:.4f}, NLL {final['nll']:.4f}")]
  if "ts_reliability" in final:
    panels.append(("ts_reliability", f"T = {final['temperature']:.3g} (fitted on validation): "
                   f"ECE {final['ts_ece']:.4f}, NLL {final['ts_nll']:.4f}"))
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
  for ax, (key, label) in zip(axes[0], panels):
    _reliability_panel(ax, final[key], label)
  if title:
    fig.suptitle(f"{title}: reliability (15 equal-width bins)", fontsize=11)
  fig.tight_layout()
  save(fig, path)
