"""Digit scenes: scikit-learn digits pasted onto a larger canvas, with masks, boxes and reading.

`compose` builds scenes from a set of 8x8 digits (one split of `builders.digits_arrays`,
so train scenes use only train digits and test scenes only test digits). Each scene:

* holds ``min_digits .. max_digits`` digits, drawn uniformly with replacement from the
  source split, each upscaled by a factor drawn uniformly from ``scales`` (side
  ``round(8 * factor)`` pixels) with bilinear interpolation (`upscale_matrix`);
* places them left to right with **disjoint column ranges** (so they never overlap and
  "left to right" is unambiguous) and a uniformly drawn row;
* labels each pixel ``0`` (background) or ``1 + digit`` where that digit's upscaled
  intensity is at least ``threshold`` (128 of 255: half intensity);
* gives each digit the tight box of its labelled pixels, ``(y0, x0, y1, x1)`` in pixels
  with exclusive ends (``y1 - y0`` is the box height), and the digits in reading order.

Randomness comes from numpy's PCG64 bit generator through `numpy.random.Generator.
bit_generator.random_raw` (raw 64-bit words, whose stream numpy keeps stable), turned
into uniforms here, so a scene set depends only on its inputs and ``key``.

Example:
  >>> import numpy as np
  >>> digits = np.full((1, 8, 8), 255, np.uint8)
  >>> s = compose(digits, np.array([7]), 2, SceneSpec(min_digits=1, max_digits=1), key=0)
  >>> s["image"].shape, s["segmentation"].shape, s["boxes"].shape
  ((2, 32, 48, 1), (2, 32, 48), (2, 1, 4))
  >>> int(s["digits"][0, 0]), int(s["segmentation"].max())
  (7, 8)
"""

from __future__ import annotations

import dataclasses

import numpy as np

SOURCE_SIZE = 8  # sklearn digits are 8x8


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """What a scene looks like.

  Attributes:
    canvas: (height, width) in pixels.
    min_digits, max_digits: how many digits a scene holds (uniform in between).
    scales: (low, high) of the uniform upscaling factor of each digit.
    threshold: uint8 intensity from which a pixel belongs to its digit's mask.
  """
  canvas: tuple[int, int] = (32, 48)
  min_digits: int = 1
  max_digits: int = 3
  scales: tuple[float, float] = (1.5, 2.0)
  threshold: int = 128

  def __post_init__(self):
    if not 1 <= self.min_digits <= self.max_digits:
      raise ValueError(f"need 1 <= min_digits <= max_digits, got {self.min_digits}, "
                       f"{self.max_digits}")
    widest = self.max_digits * round(SOURCE_SIZE * self.scales[1])
    if widest > self.canvas[1] or round(SOURCE_SIZE * self.scales[1]) > self.canvas[0]:
      raise ValueError(f"{self.max_digits} digits of up to {round(SOURCE_SIZE * self.scales[1])} "
                       f"pixels do not fit side by side on a {self.canvas} canvas")


def upscale_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` linear-interpolation weights with pixel centres aligned.

  Output pixel ``i`` samples the input at ``(i + 0.5) n_in / n_out - 0.5`` (clamped to
  the edge pixels), the convention of PIL's and OpenCV's bilinear resize; each row sums
  to 1. ``M @ image @ M.T`` resizes a square image.

  Examples:
    >>> upscale_matrix(2, 4)
    array([[1.  , 0.  ],
           [0.75, 0.25],
           [0.25, 0.75],
           [0.  , 1.  ]])
  """
  src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in))
  m[np.arange(n_out), lo] += 1 - frac
  m[np.arange(n_out), hi] += frac
  return m


def upscale(images: np.ndarray, side: int) -> np.ndarray:
  """``[..., 8, 8]`` uint8 digits resized to ``[..., side, side]`` uint8 (bilinear, rounded)."""
  m = upscale_matrix(images.shape[-1], side)
  out = np.einsum("ij,...jk,lk->...il", m, images.astype(np.float64), m)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _uniforms(key: int, shape: tuple[int, ...]) -> np.ndarray:
  """Uniforms in [0, 1) from PCG64's raw output (53 bits each)."""
  bits = np.random.PCG64(key).random_raw(int(np.prod(shape)))
  return ((bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(shape)


def _layout(u: np.ndarray, spec: SceneSpec) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
  """(count, sides [n], rows [n], columns [n]) of one scene from its uniforms."""
  n_max = spec.max_digits
  lo_n, hi_n = spec.min_digits, spec.max_digits
  count = lo_n + min(int(u[0] * (hi_n - lo_n + 1)), hi_n - lo_n)
  factors = spec.scales[0] + u[1:1 + count] * (spec.scales[1] - spec.scales[0])
  sides = np.rint(SOURCE_SIZE * factors).astype(int)
  # The free columns, split into count + 1 gaps in proportions of exponential draws.
  free = spec.canvas[1] - int(sides.sum())
  e = -np.log1p(-u[1 + n_max:2 + n_max + count]) + 1e-12
  gaps = np.floor(free * e / e.sum()).astype(int)
  cols = gaps[0] + np.concatenate([[0], np.cumsum(sides[:-1] + gaps[1:count])])
  room = spec.canvas[0] - sides + 1
  rows = np.minimum((u[2 + 2 * n_max:2 + 2 * n_max + count] * room).astype(int), room - 1)
  return count, sides, rows, cols


def _sources(u: np.ndarray, spec: SceneSpec, n: int) -> np.ndarray:
  """Indices of the ``max_digits`` source digits a scene may use, uniform over ``n``."""
  start = 2 + 3 * spec.max_digits
  return np.minimum((u[start:start + spec.max_digits] * n).astype(int), n - 1)


def compose(images: np.ndarray, labels: np.ndarray, num_scenes: int, spec: SceneSpec,
            *, key: int) -> dict[str, np.ndarray]:
  """``num_scenes`` scenes from source digits ``images`` ``[n, 8, 8]`` (or ``[n, 8, 8, 1]``).

  Returns:
    ``image`` uint8 ``[N, H, W, 1]``, ``segmentation`` uint8 ``[N, H, W]`` (0 background,
    ``1 + digit`` on a digit), ``boxes`` float32 ``[N, max_digits, 4]`` (y0, x0, y1, x1;
    zeros past the scene's digits), ``digits`` int32 ``[N, max_digits]`` (left to right,
    0 past the end), ``digit_mask`` uint8 ``[N, max_digits]`` (1 for a real digit) and
    ``source`` int32 ``[N, max_digits]`` (index of each digit in ``images``, -1 past the
    end).
  """
  images = np.asarray(images).reshape(-1, SOURCE_SIZE, SOURCE_SIZE)
  labels = np.asarray(labels)
  n_max, (h, w) = spec.max_digits, spec.canvas
  u = _uniforms(key, (num_scenes, 2 + 4 * n_max))
  out = {"image": np.zeros((num_scenes, h, w, 1), np.uint8),
         "segmentation": np.zeros((num_scenes, h, w), np.uint8),
         "boxes": np.zeros((num_scenes, n_max, 4), np.float32),
         "digits": np.zeros((num_scenes, n_max), np.int32),
         "digit_mask": np.zeros((num_scenes, n_max), np.uint8),
         "source": np.full((num_scenes, n_max), -1, np.int32)}
  # Every source digit at every side a scene can use, computed once.
  sides = range(round(SOURCE_SIZE * spec.scales[0]), round(SOURCE_SIZE * spec.scales[1]) + 1)
  patches = {side: upscale(images, side) for side in sides}
  for side, p in patches.items():
    if not (p >= spec.threshold).any(axis=(1, 2)).all():
      raise ValueError(f"a source digit has no pixel >= {spec.threshold} at side {side}")
  for i in range(num_scenes):
    count, sides, rows, cols = _layout(u[i], spec)
    picks = _sources(u[i], spec, len(images))
    for j in range(count):
      src, side, r, c = int(picks[j]), int(sides[j]), int(rows[j]), int(cols[j])
      patch = patches[side][src]
      ink = patch >= spec.threshold
      out["image"][i, r:r + side, c:c + side, 0] = patch
      out["segmentation"][i, r:r + side, c:c + side][ink] = 1 + labels[src]
      ys, xs = np.nonzero(ink)
      out["boxes"][i, j] = (r + ys.min(), c + xs.min(), r + ys.max() + 1, c + xs.max() + 1)
      out["digits"][i, j], out["digit_mask"][i, j], out["source"][i, j] = labels[src], 1, src
  return out
