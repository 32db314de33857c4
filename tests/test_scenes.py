"""Digit scenes: the composer (determinism, what is pasted where, masks, boxes, reading
order), the interpolation against `jax.image.resize`, and the tfds builders (prepared
offline, read back through ``tfds.data_source``, train scenes only from train digits)."""

from __future__ import annotations

import time

import jax
import numpy as np
import pytest
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from cnnjax.data import builders, catalog, scenes, sources

SPEC = builders.DigitScenes.SPEC


@pytest.fixture(scope="module")
def digits():
  return builders.digits_arrays()


@pytest.fixture(scope="module")
def composed(digits):
  images, labels = digits["train"]
  return scenes.compose(images, labels, 300, SPEC, key=7)


def test_compose_is_deterministic(digits, composed):
  images, labels = digits["train"]
  again = scenes.compose(images, labels, 300, SPEC, key=7)
  assert all(np.array_equal(composed[k], again[k]) for k in composed)
  other = scenes.compose(images, labels, 300, SPEC, key=8)
  assert not np.array_equal(composed["image"], other["image"])


def test_upscale_is_bilinear_resize():
  """Reference: jax.image.resize's 'linear' method (pixel centres aligned, no antialias
  when enlarging), an implementation independent of the interpolation matrix here."""
  image = np.random.default_rng(0).integers(0, 256, (8, 8)).astype(np.float32)
  for side in (12, 15, 20):
    m = scenes.upscale_matrix(8, side)
    np.testing.assert_allclose(m.sum(1), 1.0)
    want = np.asarray(jax.image.resize(image, (side, side), "linear"))
    np.testing.assert_allclose(m @ image @ m.T, want, rtol=1e-5, atol=1e-3)


def test_scenes_hold_what_was_pasted(digits, composed):
  """Each digit's pixels are its upscaled source digit; masks, boxes and reading order follow."""
  images, labels = digits["train"]
  counts = composed["digit_mask"].sum(1)
  assert set(counts) == {1, 2, 3}
  for i in range(len(counts)):
    seg, canvas = composed["segmentation"][i], composed["image"][i, ..., 0]
    expected_seg = np.zeros_like(seg)
    columns = []
    for j in range(counts[i]):
      src, digit = composed["source"][i, j], composed["digits"][i, j]
      assert labels[src] == digit
      y0, x0, y1, x1 = composed["boxes"][i, j].astype(int)
      # The digit's class pixels are exactly where its upscaled source passes the threshold,
      # and its box is their tight bound.
      ys, xs = np.nonzero(seg == 1 + digit)
      own = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
      assert own.any()
      tight = (ys[own].min(), xs[own].min(), ys[own].max() + 1, xs[own].max() + 1)
      assert tight == (y0, x0, y1, x1)
      found = _find_patch(canvas, images[src, ..., 0], (y0, x0, y1, x1))
      assert found is not None, (i, j)
      r, c, patch = found
      expected_seg[r:r + len(patch), c:c + len(patch)][patch >= SPEC.threshold] = 1 + digit
      columns.append((c, c + len(patch)))
    np.testing.assert_array_equal(seg, expected_seg)
    # Left to right, with disjoint column ranges.
    assert all(a[1] <= b[0] for a, b in zip(columns, columns[1:])), columns
    assert np.all(composed["digit_mask"][i, counts[i]:] == 0)
    assert np.all(composed["boxes"][i, counts[i]:] == 0)


def _find_patch(canvas, digit, box):
  """(row, col, patch) of an upscaled ``digit`` found on ``canvas`` covering ``box``."""
  y0, x0, y1, x1 = box
  for side in range(round(8 * SPEC.scales[0]), round(8 * SPEC.scales[1]) + 1):
    patch = scenes.upscale(digit, side)
    ink = np.nonzero(patch >= SPEC.threshold)
    r, c = y0 - ink[0].min(), x0 - ink[1].min()
    if r < 0 or c < 0 or r + side > canvas.shape[0] or c + side > canvas.shape[1]:
      continue
    if np.array_equal(canvas[r:r + side, c:c + side], patch):
      return r, c, patch
  return None


@pytest.fixture(scope="module")
def prepared(data_dir):
  start = time.perf_counter()
  out = {name: sources.open_splits(name, data_dir) for name in ("digit_scenes",
                                                                "digit_scenes_single")}
  return out, time.perf_counter() - start


def test_builders_prepare_offline_and_read_back(prepared, data_dir, digits):
  splits, seconds = prepared
  assert seconds < 120, f"preparing both scene datasets took {seconds:.0f} s"
  for name, (train, test) in splits.items():
    info = catalog.dataset_info(name)
    assert (len(train), len(test)) == (builders.SCENES_SIZES["train"],
                                       builders.SCENES_SIZES["test"])
    for split, source in (("train", train), ("test", test)):
      fields = sources.read_fields(source, info, data_dir=data_dir, split=split)
      assert set(fields) == {"image", *info.fields}
      assert fields["image"].shape == (len(source), *info.image_shape)
      # The builder's records are `compose` of that split's digits, with its fixed key.
      builder = sources.EMBEDDED[name]
      key = builders.SCENES_SEED * 10 + (0 if split == "train" else 1)
      want = scenes.compose(*digits[split], 40, builder.SPEC, key=key)
      np.testing.assert_array_equal(fields["image"][:40], want["image"])
      np.testing.assert_array_equal(fields["segmentation"][:40], want["segmentation"])
      if name == "digit_scenes":
        np.testing.assert_array_equal(fields["boxes"][:40], want["boxes"])
        np.testing.assert_array_equal(fields["digits"][:40], want["digits"])
        np.testing.assert_array_equal(fields["digit_mask"][:40], want["digit_mask"])
      else:
        np.testing.assert_array_equal(fields["box"][:40], want["boxes"][:, 0])
        np.testing.assert_array_equal(fields["label"][:40], want["digits"][:, 0])
        assert set(want["digit_mask"].sum(1)) == {1}


def test_train_and_test_scenes_share_no_source_digit(digits):
  """The digits split (sklearn's fixed split, recomputed here on row indices) is disjoint,
  scenes of a split draw only on its rows, and no two sklearn digits are identical, so no
  source image appears in both the train and the test scenes."""
  raw = sk_datasets.load_digits()
  rows = np.arange(len(raw.target))
  train_rows, test_rows = model_selection.train_test_split(
      rows, test_size=builders.DIGITS_TEST_SIZE, stratify=raw.target,
      random_state=builders.DIGITS_SPLIT_SEED)
  assert not set(train_rows) & set(test_rows)
  assert len(np.unique(raw.images.reshape(len(rows), -1), axis=0)) == len(rows)
  np.testing.assert_array_equal(digits["train"][1], raw.target[train_rows])
  for split in ("train", "test"):
    images, labels = digits[split]
    s = scenes.compose(images, labels, 200, SPEC, key=1)
    used = s["source"][s["digit_mask"] > 0]
    assert used.min() >= 0 and used.max() < len(images)
