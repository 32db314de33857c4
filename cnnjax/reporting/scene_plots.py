"""Test examples of the scene tasks: masks, boxes and readings next to the images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnjax.reporting.plots import pyplot, save


def _grid(n: int, cols: int, width: float, height: float):
  plt = pyplot()
  rows = max(1, -(-n // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  return fig, axes


def plot_masks(images: np.ndarray, truth: np.ndarray, predicted: np.ndarray, num_classes: int,
               path: str, title: str = "") -> None:
  """One row per example: the image, its true class mask, the predicted one."""
  n = len(images)
  fig, axes = _grid(3 * n, 3, 2.6, 1.9)
  axes = axes.reshape(n, 3)
  for i in range(n):
    axes[i, 0].imshow(images[i, ..., 0], cmap="gray", vmin=0, vmax=1)
    for ax, mask in ((axes[i, 1], truth[i]), (axes[i, 2], predicted[i])):
      ax.imshow(mask, cmap="tab20", vmin=0, vmax=max(num_classes - 1, 1), interpolation="nearest")
  for ax, label in zip(axes[0], ("image", "true mask", "predicted mask")):
    ax.set_title(label, fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  save(fig, path)


def _rectangle(ax, box, color: str) -> None:
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
  y0, x0, y1, x1 = (float(v) for v in box)
  # Box edges are pixel edges; imshow puts pixel centres on integers.
  ax.add_patch(Rectangle((min(x0, x1) - 0.5, min(y0, y1) - 0.5), abs(x1 - x0), abs(y1 - y0),
                         fill=False, color=color, lw=1.2))


def plot_boxes(images: np.ndarray, true_boxes: np.ndarray, true_labels: np.ndarray,
               boxes: np.ndarray, labels: np.ndarray, path: str, title: str = "") -> None:
  """Images with the true box (green) and the predicted one (red), classes in the titles."""
  fig, axes = _grid(len(images), 4, 2.4, 1.9)
  for i, ax in enumerate(axes.flat[:len(images)]):
    ax.imshow(images[i, ..., 0], cmap="gray", vmin=0, vmax=1)
    _rectangle(ax, true_boxes[i], "lime")
    _rectangle(ax, boxes[i], "red")
    ax.set_title(f"true {int(true_labels[i])}, predicted {int(labels[i])}", fontsize=8)
  if title:
    fig.suptitle(title + " (green: true box, red: predicted)", fontsize=10)
  fig.tight_layout()
  save(fig, path)


def plot_readings(images: np.ndarray, truth: Sequence[Sequence[int]],
                  read: Sequence[Sequence[int]], path: str, title: str = "") -> None:
  """Images titled with their true digits and the model's reading (red when wrong)."""
  fig, axes = _grid(len(images), 4, 2.4, 1.9)
  for i, ax in enumerate(axes.flat[:len(images)]):
    ax.imshow(images[i, ..., 0], cmap="gray", vmin=0, vmax=1)
    right = list(truth[i]) == list(read[i])
    ax.set_title(f"true {''.join(map(str, truth[i]))}, read {''.join(map(str, read[i])) or '-'}",
                 fontsize=8, color="black" if right else "red")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  save(fig, path)
