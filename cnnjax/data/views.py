"""A task's view of a `cnnjax.data.Dataset`: the same splits, batched differently.

Some tasks need batches that hold more than one split's rows: metric learning scores a
query split against the training embeddings, generation compares generated samples
with real ones. `DatasetView` wraps a dataset and lets a task replace `train_batches` or
`eval_batches`; everything else (sizes, `arrays`, `info`, ...) is the wrapped dataset's.

`zipped_eval_batches` builds evaluation batches from several *sources* at once: batch
``j`` holds rows ``j*E .. (j+1)*E - 1`` of every source (``E = eval_batch_size``), each
source's fields under its own prefix with its own ``mask`` (1 = a real row) and ``index``
(the row's position in its source, so a step can scatter per-example outputs into a
summable ``[n, ...]`` buffer). Process ``p`` of ``P`` gets rows ``p*b:(p+1)*b`` of every
batch, ``b = E // P``, as `Dataset.eval_batches` does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping

import numpy as np

from cnnjax.data import permutation
from cnnjax.data import pipeline


def keyed_uniform(shape: tuple[int, ...], *keys: int) -> np.ndarray:
  """float64 numbers in [0, 1) of ``shape`` that depend only on ``keys`` (SplitMix64).

  Examples:
    >>> u = keyed_uniform((3,), 7, 1)
    >>> bool(((u >= 0) & (u < 1)).all()), bool((u == keyed_uniform((3,), 7, 1)).all())
    (True, True)
  """
  k = np.zeros((), np.uint64)
  for key in keys:
    k = permutation.splitmix64(k ^ np.uint64(key & 0xFFFFFFFFFFFFFFFF))
  bits = permutation.splitmix64(np.arange(math.prod(shape), dtype=np.uint64) ^ k)
  return ((bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(shape)


class DatasetView:
  """A `Dataset` seen through a task: attributes not defined here are the dataset's.

  Subclasses override `train_batches` and/or `eval_batches`; `with_seed` keeps the view.
  """

  def __init__(self, base):
    self.base = base

  def __getattr__(self, name: str):
    # Only called for attributes the view itself lacks; `base` is always set first.
    if name == "base":
      raise AttributeError(name)
    return getattr(self.base, name)

  def with_seed(self, seed: int) -> "DatasetView":
    other = copy.copy(self)
    other.base = self.base.with_seed(seed)
    return other

  def train_batches(self, epoch: int, **kwargs) -> Iterator[dict[str, np.ndarray]]:
    return self.base.train_batches(epoch, **kwargs)

  def eval_batches(self, split: str, **kwargs) -> Iterator[dict[str, np.ndarray]]:
    return self.base.eval_batches(split, **kwargs)


Source = tuple[str, Mapping[str, np.ndarray], int]  # (prefix, fields, number of rows)


def zipped_eval_batches(sources: list[Source], eval_batch_size: int, *, process_index: int = 0,
                        process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Fixed-shape evaluation batches holding rows of every source side by side.

  Args:
    sources: ``(prefix, fields, n)``: ``fields`` maps names to arrays with ``n`` rows
      (may be empty: only ``mask`` and ``index`` then); ``image`` (uint8) becomes
      float32 in [0, 1]. Keys in a batch are ``prefix + name``.
    eval_batch_size: the global batch ``E``.
    process_index, process_count: this process's slot.

  Yields:
    ``ceil(max n / E)`` batches; for each source ``prefix + "mask"`` (float32 ``[b]``),
    ``prefix + "index"`` (int32 ``[b]``, the row number, also past the end where the mask
    is 0) and its fields (zeros past the end).
  """
  b = eval_batch_size // process_count
  if b * process_count != eval_batch_size:
    raise ValueError(f"eval_batch_size ({eval_batch_size}) must be divisible by the process "
                     f"count ({process_count})")
  longest = max(n for _, _, n in sources)
  for j in range(math.ceil(longest / eval_batch_size)):
    index = j * eval_batch_size + process_index * b + np.arange(b)
    batch: dict[str, np.ndarray] = {}
    for prefix, fields, n in sources:
      valid = index < n
      rows = np.where(valid, index, 0)
      batch[prefix + "mask"] = valid.astype(np.float32)
      batch[prefix + "index"] = index.astype(np.int32)
      for name, values in fields.items():
        v = values[rows] if n else np.zeros((b, *values.shape[1:]), values.dtype)
        v = np.where(valid.reshape(-1, *([1] * (v.ndim - 1))), v, 0).astype(v.dtype)
        batch[prefix + name] = pipeline.to_float(v) if name == "image" else v
    yield batch
