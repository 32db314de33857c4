"""Orders that depend only on their keys: numpy arithmetic, nothing heavier.

Validation carving, training orders, label noise and subsampling all draw from these,
so config validation can use them without loading the data stack.
"""

from __future__ import annotations

import numpy as np

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
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
    k = splitmix64(k ^ np.uint64(key & 0xFFFFFFFFFFFFFFFF))
  sort_keys = splitmix64(np.arange(n, dtype=np.uint64) ^ k)
  return np.argsort(sort_keys, kind="stable")
