"""The input pipeline: a whole dataset in memory, batched by index.

Every supported dataset fits in host memory as uint8 (CIFAR: 180 MB), so each
split is read once through its tfds data source and batches are cut from numpy
arrays with one fancy-indexing gather. A split is a dict of arrays with one row per
example: ``image`` (uint8 ``[n, H, W, C]``) and the dataset's other fields
(`cnnjax.data.catalog.DatasetInfo.fields`: ``label`` for classification, masks and
boxes for scenes); every batch holds them all. The epoch order is a keyed permutation
of the example indices computed in one vectorised step; a grain `MapDataset`
over step numbers turns it into random-access batches, so batch ``k`` of epoch
``e`` is a pure function of ``(seed, e, k)``:

* resuming at ``start_step=k`` gives exactly the batches a full pass gives
  from ``k`` on;
* process ``p`` of ``P`` gets rows ``p*b:(p+1)*b`` of every global batch, with
  ``b = batch_size // P``, so the processes together see each global batch once;
* evaluation batches have a fixed shape; the last one is padded with mask 0,
  and every example is counted exactly once over all processes.

Example (the default digits config)::

  ds = load(config)
  batch = next(ds.train_batches(epoch=0))
  batch["image"].shape, batch["label"].dtype   # (32, 8, 8, 1), dtype('int32')
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np

from cnnjax.data import catalog
from cnnjax.data import sources

# The validation set is carved with this constant key, not config.seed, so that
# every seed of an experiment is validated on the same examples.
VALIDATION_KEY = 0x5EED_0F_7A11D

_SPLITS = ("train", "validation", "test")
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's output function (Steele, Lea & Flood, OOPSLA 2014), on uint64 arrays.

  Used instead of numpy's Generator so that orders stay the same across numpy
  releases (numpy promises no stream compatibility for Generator methods).
  """
  x = x.astype(np.uint64)
  with np.errstate(over="ignore"):
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return x ^ (x >> np.uint64(31))


def keyed_permutation(n: int, *keys: int) -> np.ndarray:
  """A permutation of ``range(n)`` that depends only on ``n`` and ``keys``.

  Each index gets the pseudo-random sort key ``splitmix64(index ^ k)`` where
  ``k`` mixes all ``keys``; sorting by it gives the permutation.

  Examples:
    >>> p = keyed_permutation(5, 0, 1)
    >>> sorted(p.tolist())
    [0, 1, 2, 3, 4]
    >>> bool((keyed_permutation(5, 0, 1) == p).all())
    True
  """
  k = np.zeros((), np.uint64)
  for key in keys:
    k = _splitmix64(k ^ np.uint64(key & 0xFFFFFFFFFFFFFFFF))
  sort_keys = _splitmix64(np.arange(n, dtype=np.uint64) ^ k)
  return np.argsort(sort_keys, kind="stable")


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [0, 1] (``x / 255``)."""
  return images.astype(np.float32) / np.float32(255.0)


def _check_processes(process_index: int, process_count: int, global_size: int,
                     what: str) -> int:
  if process_count < 1:
    raise ValueError(f"process_count must be >= 1, got {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  if global_size % process_count:
    raise ValueError(f"{what} ({global_size}) must be divisible by the process count "
                     f"({process_count})")
  return global_size // process_count


Split = dict[str, np.ndarray]


def as_split(arrays: Split | tuple[np.ndarray, np.ndarray]) -> Split:
  """``{"image", ...}``; a pair ``(images, labels)`` means ``{"image", "label"}``."""
  if isinstance(arrays, tuple):
    images, labels = arrays
    return {"image": np.asarray(images), "label": np.asarray(labels)}
  return {k: np.asarray(v) for k, v in arrays.items()}


def _take(split: Split, rows) -> Split:
  return {k: v[rows] for k, v in split.items()}


class Dataset:
  """In-memory train / validation / test splits with deterministic batching.

  Args:
    info: the catalog entry of the dataset.
    train: the full train split: ``{"image": uint8 [n, H, W, C], field: [n, ...]}``
      (or ``(images, labels)``); integer labels become int32.
    test: the same for the test split.
    batch_size: global training batch size (all processes together).
    eval_batch_size: global evaluation batch size.
    seed: decides the training order (with the epoch number).
    validation_fraction: share of ``train`` held out as the validation split,
      in ``[0, 1)``; 0 means no validation split.
  """

  def __init__(self, info: catalog.DatasetInfo, train: Split | tuple[np.ndarray, np.ndarray],
               test: Split | tuple[np.ndarray, np.ndarray], *, batch_size: int,
               eval_batch_size: int, seed: int = 0, validation_fraction: float = 0.0):
    if not 0.0 <= validation_fraction < 1.0:
      raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if eval_batch_size < 1:
      raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
    self.info = info
    self.batch_size = int(batch_size)
    self.eval_batch_size = int(eval_batch_size)
    self.seed = int(seed)
    self.validation_fraction = float(validation_fraction)

    train, test = _int32_labels(as_split(train)), _int32_labels(as_split(test))
    n = len(train["image"])
    n_val = int(round(validation_fraction * n))
    held_out = keyed_permutation(n, VALIDATION_KEY)[:n_val]
    is_val = np.zeros(n, bool)
    is_val[held_out] = True
    # Boolean masks keep the original order inside each split.
    self._splits: dict[str, Split] = {
        "train": _take(train, ~is_val), "validation": _take(train, is_val), "test": test}
    for split, fields in self._splits.items():
      _check_split(info, split, fields)
    if self.steps_per_epoch < 1:
      raise ValueError(f"batch_size ({batch_size}) is larger than the {info.name} train "
                       f"split ({self.num_examples('train')} examples)")

  def with_seed(self, seed: int) -> "Dataset":
    """The same splits (arrays shared, not copied) with the training order of ``seed``."""
    other = copy.copy(self)
    other.seed = int(seed)
    return other

  # -- sizes ------------------------------------------------------------------

  @property
  def splits(self) -> tuple[str, ...]:
    """Non-empty splits: ``('train', 'validation', 'test')`` or without validation."""
    return tuple(s for s in _SPLITS if self.num_examples(s) > 0)

  def num_examples(self, split: str) -> int:
    return len(self._get(split)["image"])

  @property
  def fields(self) -> tuple[str, ...]:
    """The fields of every example besides ``image``."""
    return tuple(k for k in self._splits["train"] if k != "image")

  @property
  def steps_per_epoch(self) -> int:
    """Full training batches per epoch (the remainder is dropped)."""
    return self.num_examples("train") // self.batch_size

  def num_eval_batches(self, split: str) -> int:
    """Batches `eval_batches` yields for ``split`` (the same on every process)."""
    return math.ceil(self.num_examples(split) / self.eval_batch_size)

  def _get(self, split: str) -> Split:
    if split not in self._splits:
      raise ValueError(f"Unknown split {split!r}; expected one of {list(_SPLITS)}")
    return self._splits[split]

  def split_arrays(self, split: str, *, dtype: Any = np.float32) -> Split:
    """Every field of a whole split; ``image`` as `arrays` gives it."""
    fields = dict(self._get(split))
    fields["image"] = _pixels(fields["image"], dtype)
    return fields

  def arrays(self, split: str, *, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """A whole split: images ``[n, H, W, C]`` and int32 labels ``[n]``.

    ``dtype=np.float32`` (default) gives pixels in [0, 1] like the batches;
    ``dtype=np.uint8`` gives the stored bytes (4x smaller, e.g. to keep a
    dataset on an accelerator and scale there).
    """
    fields = self._get(split)
    if "label" not in fields:
      raise ValueError(f"{self.info.name} has no labels (fields {list(self.fields)}); "
                       "use split_arrays")
    return _pixels(fields["image"], dtype), fields["label"]

  # -- training ---------------------------------------------------------------

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The permutation of train indices used in ``epoch`` (depends on seed, epoch)."""
    return keyed_permutation(self.num_examples("train"), self.seed, epoch)

  def train_batches(self, epoch: int, *, start_step: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Yields this process's share of the training batches of ``epoch``.

    Args:
      epoch: epoch number (>= 0); with the seed it fixes the order.
      start_step: first step within the epoch to yield (for resuming).
      process_index, process_count: this process's slot among all processes.

    Yields:
      ``{"image": float32 [b, H, W, C] in [0, 1], "label": int32 [b], ...}`` (every
      field) with ``b = batch_size // process_count``, for steps ``start_step ..
      steps_per_epoch - 1``.
    """
    b = _check_processes(process_index, process_count, self.batch_size, "batch_size")
    if not 0 <= start_step <= self.steps_per_epoch:
      raise ValueError(f"start_step must be in [0, {self.steps_per_epoch}], got {start_step}")
    fields = self._splits["train"]
    # This process's rows of each global batch, [steps, b].
    order = self.epoch_order(epoch)[: self.steps_per_epoch * self.batch_size]
    rows = order.reshape(self.steps_per_epoch, process_count, b)[:, process_index]

    def make_batch(step: int) -> dict[str, np.ndarray]:
      batch = _take(fields, rows[step])
      batch["image"] = to_float(batch["image"])
      return batch

    # A grain MapDataset is random access: element k is built from step k only.
    steps = grain.MapDataset.range(start_step, self.steps_per_epoch).map(make_batch)
    for k in range(len(steps)):
      yield steps[k]

  # -- evaluation -------------------------------------------------------------

  def eval_batches(self, split: str, *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Yields this process's share of ``split`` in fixed-shape, masked batches.

    Global batch ``j`` holds examples ``j*E .. (j+1)*E - 1`` (``E =
    eval_batch_size``), padded past the end with zeros in every field and mask 0;
    process ``p`` gets its rows ``p*b:(p+1)*b``, ``b = E // process_count``.

    Yields:
      ``{"image": float32 [b, H, W, C], "label": int32 [b], ..., "mask": float32 [b]}``.
    """
    b = _check_processes(process_index, process_count, self.eval_batch_size,
                         "eval_batch_size")
    fields = self._get(split)
    n = len(fields["image"])
    if n == 0:
      raise ValueError(f"Split {split!r} of {self.info.name} is empty"
                       + (" (validation_fraction is 0)" if split == "validation" else ""))
    for j in range(self.num_eval_batches(split)):
      start = j * self.eval_batch_size + process_index * b
      stop = min(start + b, n)
      count = max(stop - start, 0)
      batch = {k: np.zeros((b, *v.shape[1:]), np.float32 if k == "image" else v.dtype)
               for k, v in fields.items()}
      batch[EVAL_MASK] = np.zeros((b,), np.float32)
      if count:
        for k, v in fields.items():
          batch[k][:count] = to_float(v[start:stop]) if k == "image" else v[start:stop]
        batch[EVAL_MASK][:count] = 1.0
      yield batch


def _pixels(images: np.ndarray, dtype: Any) -> np.ndarray:
  if np.dtype(dtype) == np.uint8:
    return images
  if np.dtype(dtype) != np.float32:
    raise ValueError(f"dtype must be float32 or uint8, got {np.dtype(dtype)}")
  return to_float(images)


def _int32_labels(split: Split) -> Split:
  if "label" in split and np.issubdtype(split["label"].dtype, np.integer):
    split["label"] = split["label"].astype(np.int32)
  return split


# Evaluation batches add this field (1 = a real example, 0 = padding); no dataset may use it.
EVAL_MASK = "mask"


def _check_split(info: catalog.DatasetInfo, name: str, fields: Split) -> None:
  if EVAL_MASK in fields:
    raise ValueError(f"{info.name} {name}: a field may not be called {EVAL_MASK!r}, the name "
                     "evaluation batches give their padding mask; rename it")
  x = fields.get("image")
  if x is None or x.dtype != np.uint8 or x.shape[1:] != tuple(info.image_shape):
    raise ValueError(f"{info.name} {name}: expected uint8 images [n, "
                     f"{', '.join(map(str, info.image_shape))}], got "
                     f"{None if x is None else (x.dtype, x.shape)}")
  bad = {k: np.shape(v) for k, v in fields.items() if len(v) != len(x)}
  if bad:
    raise ValueError(f"{info.name} {name}: {len(x)} images but field lengths {bad}")


def _cfg(config: Mapping[str, Any] | Any, key: str) -> Any:
  try:
    return config[key]
  except (KeyError, AttributeError) as e:
    raise ValueError(f"config has no key {key!r} (see cnnjax/config.py)") from e


def load(config: Any) -> Dataset:
  """Reads the dataset a config names and returns its `Dataset`.

  Uses ``config.dataset``, ``data_dir`` (see `sources.resolve_data_dir`),
  ``validation_fraction``, ``seed``, ``batch_size`` and ``eval_batch_size``.

  Raises:
    DatasetNotFoundError: the dataset is not prepared (nothing is downloaded).
    ValueError: a config value is out of range; the message names the key.
  """
  name = _cfg(config, "dataset")
  if name not in catalog.DATASETS:
    raise ValueError(f"config.dataset={name!r} is not a known dataset; expected one of "
                     f"{sorted(catalog.DATASETS)}")
  fraction = _cfg(config, "validation_fraction")
  if not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
    raise ValueError(f"config.validation_fraction={fraction!r} must be in [0, 1) "
                     "(0 = no validation split)")
  for key in ("batch_size", "eval_batch_size"):
    value = _cfg(config, key)
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"config.{key}={value!r} must be a positive integer")
  info = catalog.dataset_info(name)
  data_dir = sources.resolve_data_dir(_cfg(config, "data_dir"))
  train_src, test_src = sources.open_splits(name, data_dir, (info.train_split, info.test_split))
  train = sources.read_fields(train_src, info, data_dir=data_dir, split=info.train_split)
  test = sources.read_fields(test_src, info, data_dir=data_dir, split=info.test_split)
  return Dataset(info, train, test, batch_size=config.batch_size,
                 eval_batch_size=config.eval_batch_size, seed=_cfg(config, "seed"),
                 validation_fraction=fraction)
