"""Tests of cnnjax.data: offline datasets, preparation from raw archives, the pipeline.

Nothing here touches the network: digits comes from scikit-learn, the real
datasets are tiny archives written by the tests in the original file formats,
and `tfds.testing.mock_data` stands in for prepared mnist / cifar10.
"""

import gzip
import io
import os
import pickle
import struct
import tarfile
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

import cnnjax.data
from cnnjax.data import prepare
from cnnjax.data import sources
from cnnjax import config as config_lib


def make_config(**overrides):
  c = config_lib.get_config()
  for key, value in overrides.items():
    c[key] = value
  return c


# ---------------------------------------------------------------------------
# data_dir resolution


def test_data_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.setenv("CNNJAX_DATA_DIR", str(tmp_path / "env"))
  assert sources.resolve_data_dir(str(tmp_path / "cfg")) == str(tmp_path / "cfg")
  assert sources.resolve_data_dir("") == str(tmp_path / "env")
  monkeypatch.delenv("CNNJAX_DATA_DIR")
  assert sources.resolve_data_dir("") == os.path.expanduser("~/tensorflow_datasets")


# ---------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("digits_data")
  start = time.perf_counter()
  sources.ensure_embedded("digits", str(path))
  elapsed = time.perf_counter() - start
  # No network is reachable here, so any download attempt would hang for minutes.
  assert elapsed < 30, f"preparing digits took {elapsed:.1f} s"
  return str(path)


def test_digits_split_matches_sklearn(digits_dir):
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  ds = cnnjax.data.load(make_config(dataset="digits", data_dir=digits_dir,
                                    validation_fraction=0.0))
  assert ds.num_examples("train") == 1437
  assert ds.num_examples("test") == 360
  # Reference: sklearn's own split of its own data, scaled by round(v*255/16).
  digits = load_digits()
  x_tr, x_te, y_tr, y_te = train_test_split(digits.images, digits.target, test_size=360,
                                            stratify=digits.target, random_state=0)
  for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
    images, labels = ds.arrays(split, dtype=np.uint8)
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_array_equal(images[..., 0], np.floor(x * 255 / 16 + 0.5).astype(np.uint8))
  # Stratified: each class's share of the test split is its share of the whole.
  counts = np.bincount(y_te, minlength=10)
  expected = np.bincount(digits.target, minlength=10) * 360 / len(digits.target)
  assert np.all(np.abs(counts - expected) <= 1)


def test_digits_second_open_is_fast(digits_dir):
  start = time.perf_counter()
  train, test = sources.open_splits("digits", digits_dir)
  assert time.perf_counter() - start < 2
  assert (len(train), len(test)) == (1437, 360)


def test_digits_default_config_batches(digits_dir):
  ds = cnnjax.data.load(make_config(data_dir=digits_dir))
  assert ds.info.name == "digits"
  assert ds.num_examples("validation") == round(0.1 * 1437)
  assert ds.num_examples("train") == 1437 - round(0.1 * 1437)
  assert ds.steps_per_epoch == ds.num_examples("train") // 32
  batch = next(ds.train_batches(0))
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0


# ---------------------------------------------------------------------------
# missing datasets


def test_missing_dataset_fails_fast_with_prepare_command(tmp_path):
  start = time.perf_counter()
  with pytest.raises(cnnjax.data.DatasetNotFoundError) as e:
    cnnjax.data.load(make_config(dataset="cifar10", data_dir=str(tmp_path)))
  assert time.perf_counter() - start < 2
  message = str(e.value)
  assert "\n" not in message
  assert f"Dataset 'cifar10' is not prepared in {tmp_path}." in message
  assert "python -m cnnjax.data.prepare --dataset=cifar10" in message
  assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("key,value", [("validation_fraction", 1.0),
                                       ("validation_fraction", -0.1),
                                       ("batch_size", 0),
                                       ("dataset", "imagenet")])
def test_bad_config_values_are_named(key, value, tmp_path):
  with pytest.raises(ValueError, match=key):
    cnnjax.data.load(make_config(data_dir=str(tmp_path), **{key: value}))


# ---------------------------------------------------------------------------
# tfds mock data: the path end-to-end tests use


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_mock_data_loads(name, shape, tmp_path):
  with tfds.testing.mock_data(num_examples=64):
    ds = cnnjax.data.load(make_config(dataset=name, data_dir=str(tmp_path), batch_size=8,
                                      eval_batch_size=16))
  assert ds.num_examples("train") + ds.num_examples("validation") == 64
  assert ds.num_examples("test") == 64
  batch = next(ds.train_batches(0))
  assert batch["image"].shape == (8, *shape)
  batch = next(ds.eval_batches("test"))
  assert batch["image"].shape == (16, *shape) and batch["mask"].shape == (16,)
  assert not list(tmp_path.iterdir())  # Fake data is never cached.


# ---------------------------------------------------------------------------
# prepare from raw archives (tiny files in the original formats)


def _idx_bytes(array):
  """The idx format as described on yann.lecun.com/exdb/mnist: 0, 0, type 0x08, ndim,
  big-endian int32 dims, data."""
  header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
  return header + array.astype(np.uint8).tobytes()


def write_mnist(raw_dir, rng, n_train=6, n_test=4):
  data = {}
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    with gzip.open(raw_dir / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
      f.write(_idx_bytes(images))
    with gzip.open(raw_dir / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
      f.write(_idx_bytes(labels))
    data["train" if prefix == "train" else "test"] = (images[..., None], labels)
  return data


def _add_pickle(tar, name, obj):
  payload = pickle.dumps(obj, protocol=2)
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def _cifar_rows(images):
  # CIFAR's row layout (cs.toronto.edu/~kriz/cifar.html): 1024 R, 1024 G, 1024 B.
  return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_cifar10(raw_dir, rng, per_batch=2, n_test=3):
  train_images, train_labels = [], []
  with tarfile.open(raw_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
    for i in range(1, 6):
      images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
      labels = rng.integers(0, 10, (per_batch,)).tolist()
      _add_pickle(tar, f"cifar-10-batches-py/data_batch_{i}",
                  {b"data": _cifar_rows(images), b"labels": labels})
      train_images.append(images)
      train_labels += labels
    images = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (n_test,)).tolist()
    _add_pickle(tar, "cifar-10-batches-py/test_batch",
                {b"data": _cifar_rows(images), b"labels": labels})
    _add_pickle(tar, "cifar-10-batches-py/batches.meta",
                {b"label_names": [f"class{i}".encode() for i in range(10)]})
  return {"train": (np.concatenate(train_images), np.array(train_labels)),
          "test": (images, np.array(labels))}


def write_cifar100(raw_dir, rng, n_train=5, n_test=3):
  data = {}
  with tarfile.open(raw_dir / "cifar-100-python.tar.gz", "w:gz") as tar:
    for split, n in (("train", n_train), ("test", n_test)):
      images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
      fine = rng.integers(0, 100, (n,)).tolist()
      coarse = rng.integers(0, 20, (n,)).tolist()
      _add_pickle(tar, f"cifar-100-python/{split}",
                  {b"data": _cifar_rows(images), b"fine_labels": fine,
                   b"coarse_labels": coarse})
      data[split] = (images, np.array(fine))
  return data


def write_svhn(raw_dir, rng, n_train=4, n_test=3):
  from scipy import io as scipy_io
  data = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    digits = rng.integers(0, 10, (n,))
    digits[0] = 0  # Stored as 10 in SVHN's files.
    scipy_io.savemat(raw_dir / f"{split}_32x32.mat",
                     {"X": np.moveaxis(images, 0, -1), "y": np.where(digits == 0, 10, digits)[:, None]})
    data[split] = (images, digits)
  return data


@pytest.mark.parametrize("name,writer", [("mnist", write_mnist), ("fashion_mnist", write_mnist),
                                         ("cifar10", write_cifar10), ("cifar100", write_cifar100),
                                         ("svhn_cropped", write_svhn)])
def test_prepare_from_archives_round_trips(name, writer, tmp_path):
  raw_dir = tmp_path / "raw"
  raw_dir.mkdir()
  expected = writer(raw_dir, np.random.default_rng(0))
  data_dir = str(tmp_path / "data")
  path = prepare.prepare(name, data_dir, from_dir=str(raw_dir))
  assert path.startswith(os.path.join(data_dir, name))
  # The directory is tfds's own: tfds's registered builder finds and reads it.
  assert tfds.builder(name, data_dir=data_dir).is_prepared()
  ds = cnnjax.data.load(make_config(dataset=name, data_dir=data_dir, validation_fraction=0.0,
                                    batch_size=2, eval_batch_size=2))
  for split in ("train", "test"):
    images, labels = ds.arrays(split, dtype=np.uint8)
    np.testing.assert_array_equal(images, expected[split][0])
    np.testing.assert_array_equal(labels, expected[split][1])
    floats, _ = ds.arrays(split)
    np.testing.assert_array_equal(floats, expected[split][0].astype(np.float32) / 255)


def test_array_cache_is_used_and_checked(tmp_path):
  raw_dir = tmp_path / "raw"
  raw_dir.mkdir()
  expected = write_mnist(raw_dir, np.random.default_rng(1))
  data_dir = str(tmp_path / "data")
  version_dir = prepare.prepare("mnist", data_dir, from_dir=str(raw_dir))
  config = make_config(dataset="mnist", data_dir=data_dir, validation_fraction=0.0,
                       batch_size=2, eval_batch_size=2)
  cnnjax.data.load(config)
  cache = os.path.join(version_dir, sources.CACHE_DIRNAME, "train.npz")
  assert os.path.exists(cache)
  # A cache that disagrees with the prepared data is ignored and rewritten.
  np.savez(cache, image=np.zeros((1, 28, 28, 1), np.uint8), label=np.zeros(1, np.int32))
  images, labels = cnnjax.data.load(config).arrays("train", dtype=np.uint8)
  np.testing.assert_array_equal(images, expected["train"][0])
  np.testing.assert_array_equal(labels, expected["train"][1])
  with np.load(cache) as f:
    np.testing.assert_array_equal(f["image"], expected["train"][0])


def test_prepare_from_empty_dir_fails(tmp_path):
  (tmp_path / "raw").mkdir()
  (tmp_path / "raw" / "unrelated.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
    prepare.prepare("cifar10", str(tmp_path / "data"), from_dir=str(tmp_path / "raw"))


# ---------------------------------------------------------------------------
# pipeline guarantees, on synthetic data whose labels are example ids


def make_dataset(n_train=103, n_test=37, **kwargs):
  info = cnnjax.data.dataset_info("digits")
  rng = np.random.default_rng(1)
  train = (rng.integers(0, 256, (n_train, 8, 8, 1), dtype=np.uint8), np.arange(n_train))
  test = (rng.integers(0, 256, (n_test, 8, 8, 1), dtype=np.uint8), np.arange(n_test))
  kwargs = {"batch_size": 8, "eval_batch_size": 12, "seed": 0, "validation_fraction": 0.2,
            **kwargs}
  return cnnjax.data.Dataset(info, train, test, **kwargs), train, test


def epoch_ids(ds, epoch, **kwargs):
  return np.stack([b["label"] for b in ds.train_batches(epoch, **kwargs)])


def test_validation_carving_is_fixed_disjoint_and_seed_independent():
  ds0, train, _ = make_dataset(seed=0)
  ds1, _, _ = make_dataset(seed=5)
  val = ds0.arrays("validation")[1]
  tr = ds0.arrays("train")[1]
  assert len(val) == round(0.2 * 103)
  assert not set(val) & set(tr)
  assert sorted([*val, *tr]) == list(range(103))
  np.testing.assert_array_equal(ds1.arrays("validation")[1], val)
  # Images stay attached to their labels.
  np.testing.assert_array_equal(ds0.arrays("validation", dtype=np.uint8)[0], train[0][val])


def test_no_validation_split():
  ds, _, _ = make_dataset(validation_fraction=0.0)
  assert ds.splits == ("train", "test")
  assert ds.num_examples("train") == 103
  with pytest.raises(ValueError, match="validation"):
    next(ds.eval_batches("validation"))


def test_train_order_depends_on_seed_and_epoch_only():
  ds, _, _ = make_dataset(seed=0)
  a = epoch_ids(ds, 0)
  assert a.shape == (ds.steps_per_epoch, 8)
  np.testing.assert_array_equal(epoch_ids(make_dataset(seed=0)[0], 0), a)
  assert not np.array_equal(epoch_ids(make_dataset(seed=1)[0], 0), a)
  assert not np.array_equal(epoch_ids(ds, 1), a)
  # Without replacement, and the order is really shuffled.
  assert len(set(a.ravel())) == a.size
  assert not np.array_equal(a.ravel(), np.sort(a.ravel()))


def test_batches_carry_scaled_pixels_of_their_labels():
  ds, _, _ = make_dataset()
  images, ids = ds.arrays("train", dtype=np.uint8)
  position = {int(i): k for k, i in enumerate(ids)}
  batch = next(ds.train_batches(3))
  rows = [position[int(i)] for i in batch["label"]]
  np.testing.assert_array_equal(batch["image"], images[rows].astype(np.float32) / 255)


def test_resume_from_start_step_equals_skipping():
  ds, _, _ = make_dataset()
  full = list(ds.train_batches(2))
  for k in (0, 3, ds.steps_per_epoch):
    resumed = list(ds.train_batches(2, start_step=k))
    assert len(resumed) == len(full) - k
    for a, b in zip(resumed, full[k:]):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_partition_each_global_batch(process_count):
  ds, _, _ = make_dataset()
  global_ids = epoch_ids(ds, 1)
  shards = [epoch_ids(ds, 1, process_index=p, process_count=process_count)
            for p in range(process_count)]
  for shard in shards:
    assert shard.shape == (ds.steps_per_epoch, 8 // process_count)
  np.testing.assert_array_equal(np.concatenate(shards, axis=1), global_ids)


def test_batch_size_must_divide_by_processes():
  ds, _, _ = make_dataset()
  with pytest.raises(ValueError, match="divisible"):
    next(ds.train_batches(0, process_count=3))


@pytest.mark.parametrize("process_count", [1, 2, 3])
@pytest.mark.parametrize("split", ["test", "validation"])
def test_eval_counts_every_example_once(split, process_count):
  ds, _, _ = make_dataset()
  n = ds.num_examples(split)
  seen = []
  for p in range(process_count):
    batches = list(ds.eval_batches(split, process_index=p, process_count=process_count))
    assert len(batches) == ds.num_eval_batches(split) == -(-n // 12)
    for b in batches:
      assert b["image"].shape == (12 // process_count, 8, 8, 1)
      assert b["mask"].shape == b["label"].shape == (12 // process_count,)
      assert set(np.unique(b["mask"])) <= {0.0, 1.0}
      assert np.all(b["image"][b["mask"] == 0] == 0)
      seen += b["label"][b["mask"] == 1].tolist()
  assert sorted(seen) == sorted(ds.arrays(split)[1].tolist())
  assert len(seen) == n


def test_batch_larger_than_train_split_is_refused():
  with pytest.raises(ValueError, match="batch_size"):
    make_dataset(batch_size=500)


def test_keyed_permutation_is_a_permutation():
  for n in (1, 2, 17, 1000):
    p = cnnjax.data.keyed_permutation(n, 3, 4)
    np.testing.assert_array_equal(np.sort(p), np.arange(n))
  assert not np.array_equal(cnnjax.data.keyed_permutation(50, 0),
                            cnnjax.data.keyed_permutation(50, 1))


def test_prepare_command_is_quiet_by_default(tmp_path):
  """`python -m cnnjax.data.prepare --from_dir`: one result line, no library chatter (tfds'
  "Downloading and preparing" lines, nothing is downloaded); --verbose shows it."""
  import subprocess
  import sys
  raw = tmp_path / "raw"
  raw.mkdir()
  write_mnist(raw, np.random.default_rng(3))
  command = [sys.executable, "-m", "cnnjax.data.prepare", "--dataset=mnist",
             f"--data_dir={tmp_path / 'data'}", f"--from_dir={raw}"]
  quiet = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert quiet.returncode == 0, quiet.stderr
  assert quiet.stdout.strip().startswith("Prepared mnist in ") and quiet.stderr == ""
  verbose = subprocess.run(command + ["--overwrite", "--verbose"], capture_output=True,
                           text=True, timeout=300)
  assert verbose.returncode == 0 and "Downloading and preparing" in verbose.stderr
