"""Plots of the metric-learning and generation tasks: embedding PCA, sample grids."""

from __future__ import annotations

import os

import numpy as np

from cnnjax import retrieval
from cnnjax.reporting.plots import pyplot, save


def plot_embedding_pca(embeddings: np.ndarray, labels: np.ndarray, path: str,
                       title: str = "") -> None:
  """The first two principal components of ``embeddings`` ``[n, d]``, coloured by class."""
  plt = pyplot()
  xy, ratio = retrieval.pca_2d(embeddings)
  fig, ax = plt.subplots(figsize=(6.4, 5.6))
  classes = np.unique(labels)
  cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
  for i, c in enumerate(classes):
    at = labels == c
    ax.scatter(xy[at, 0], xy[at, 1], s=9, color=cmap(i % cmap.N), label=str(c), alpha=0.8)
  ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.1f}% of the variance)")
  ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.1f}%)")
  ax.legend(title="class", fontsize=7, markerscale=1.5, loc="best", ncol=2)
  ax.set_title(title or "test embeddings, 2-D PCA", fontsize=10)
  fig.tight_layout()
  save(fig, path)


def image_grid(images: np.ndarray, columns: int = 8, pad: int = 1) -> np.ndarray:
  """``[n, H, W, C]`` images in [0, 1] tiled into one ``[rows*(H+pad)-pad, ..., C]`` image.

  Examples:
    >>> image_grid(np.ones((3, 2, 2, 1)), columns=2).shape
    (5, 5, 1)
  """
  n, h, w, c = images.shape
  rows = -(-n // columns)
  grid = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, c), 0.5, np.float32)
  for i, image in enumerate(images):
    r, k = divmod(i, columns)
    grid[r * (h + pad):r * (h + pad) + h, k * (w + pad):k * (w + pad) + w] = image
  return grid


def plot_sample_grid(images: np.ndarray, path: str, title: str = "") -> None:
  """Generated ``images`` ``[n, H, W, C]`` (values in [0, 1]) as one PNG grid."""
  plt = pyplot()
  grid = np.clip(image_grid(np.asarray(images, np.float32)), 0.0, 1.0)
  fig, ax = plt.subplots(figsize=(4.2, 4.6))
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray_r", vmin=0, vmax=1,
            interpolation="nearest")
  ax.set_axis_off()
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  save(fig, path)


def plot_class_shares(shares: np.ndarray, path: str, title: str = "") -> None:
  """The share of generated samples the reference classifier assigns to each class."""
  plt = pyplot()
  shares = np.asarray(shares, np.float64)
  c = len(shares)
  fig, ax = plt.subplots(figsize=(6.0, 3.6))
  ax.bar(np.arange(c), shares, color=["C0" if s >= 0.25 / c else "C3" for s in shares])
  ax.axhline(1.0 / c, color="k", ls="--", lw=1, label="uniform share 1/C")
  ax.axhline(0.25 / c, color="C3", ls=":", lw=1, label="covered above 1/(4C)")
  ax.set_xticks(np.arange(c))
  ax.set_xlabel("predicted class")
  ax.set_ylabel("share of the samples")
  ax.legend(fontsize=8)
  ax.set_title(title or "class shares of the samples", fontsize=10)
  fig.tight_layout()
  save(fig, path)


def save_image_grid(images: np.ndarray, path: str, *, scale: int = 4) -> None:
  """Images ``[n, H, W, C]`` in [0, 1] as one PNG grid, each pixel ``scale`` x ``scale``.

  Written with PIL, without a figure (fast enough to call after every epoch); single
  channel images are drawn dark on light, as the grid plots show them.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = np.clip(image_grid(np.asarray(images, np.float32)), 0.0, 1.0)
  if grid.shape[-1] == 1:
    grid = 1.0 - grid[..., 0]
  pixels = np.repeat(np.repeat(np.round(grid * 255).astype(np.uint8), scale, 0), scale, 1)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(pixels).save(path)
