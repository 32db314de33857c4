"""``train_subset``: a fixed subset of the training split, the same for every seed."""

import numpy as np
import pytest

from cnnjax.data import catalog, pipeline


def _dataset(**kwargs):
  n = 100
  images = np.zeros((n, 8, 8, 1), np.uint8)
  images[:, 0, 0, 0] = np.arange(n)  # each image carries its index
  labels = np.arange(n) % 10
  return pipeline.Dataset(catalog.dataset_info("digits"), (images, labels),
                          (images[:10], labels[:10]), batch_size=10, eval_batch_size=10,
                          validation_fraction=0.2, **kwargs)


def _indices(ds, split):
  return ds.split_arrays(split, dtype=np.uint8)["image"][:, 0, 0, 0].astype(int)


def test_subset_is_fixed_ordered_and_leaves_validation_alone():
  full, subset = _dataset(), _dataset(train_subset=30, seed=0)
  kept = _indices(subset, "train")
  assert len(kept) == 30 and subset.steps_per_epoch == 3
  assert np.all(np.diff(kept) > 0)                       # original order
  assert set(kept) <= set(_indices(full, "train"))       # drawn from the training examples
  np.testing.assert_array_equal(_indices(subset, "validation"), _indices(full, "validation"))
  np.testing.assert_array_equal(_indices(_dataset(train_subset=30, seed=7), "train"), kept)
  np.testing.assert_array_equal(_indices(subset.with_seed(3), "train"), kept)


def test_subset_larger_than_the_split_is_refused():
  with pytest.raises(ValueError, match="train_subset=81 exceeds the 80 training examples"):
    _dataset(train_subset=81)
