"""Label noise and class imbalance, applied deterministically to a training split.

Both act on the *whole* train split before the validation split is carved from it, so
training and validation see the same corruption and the test split stays clean and
balanced. Everything is a pure function of the labels and the configured seed (orders
come from `cnnjax.data.permutation.keyed_permutation`, which does not depend on numpy's
random streams).

**Class imbalance** (`subsample`) keeps, of class ``c``, the first ``n_c`` examples of a
keyed permutation of that class, with ``n_max`` the largest class count:

* ``exponential``: ``n_c = floor(n_max * ratio^(-c / (C - 1)))`` (Cao et al. 2019, as
  their ``get_img_num_per_cls``), so class 0 keeps ``n_max`` and class ``C - 1`` keeps
  ``n_max / ratio``;
* ``step``: the first ``C // 2`` classes keep ``n_max``, the others
  ``floor(n_max / ratio)`` (Cao et al.'s step imbalance with mu = 0.5).

**Label noise** (`corrupt_labels`) flips exactly ``round(rate * n_c)`` examples of each
class ``c`` (a keyed permutation of that class picks which), as the authors' code of
Wang et al. 2019 does per class:

* ``symmetric``: to a uniformly drawn *other* class (Han et al. 2018's transition
  matrix: ``1 - rate`` on the diagonal, ``rate / (C - 1)`` elsewhere);
* ``pairflip``: ``c -> (c + 1) mod C`` (Han et al. 2018);
* ``asymmetric``: the digit confusions of Patrini et al. 2017, ``2 -> 7, 3 -> 8,
  5 <-> 6, 7 -> 1``; other classes are never flipped, so the realised rate over all
  examples is below ``rate``.

    >>> labels = np.repeat(np.arange(10), 10)
    >>> noisy, flipped = corrupt_labels(labels, "pairflip", 0.2, seed=0, num_classes=10)
    >>> len(flipped), bool((noisy[flipped] == (labels[flipped] + 1) % 10).all())
    (20, True)
    >>> class_targets([400] * 10, "exponential", 100.0)
    [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnnjax.data.permutation import keyed_permutation, splitmix64

NOISE_KINDS = ("none", "symmetric", "pairflip", "asymmetric")
IMBALANCE_PROFILES = ("none", "exponential", "step")
# Patrini et al. 2017, MNIST: 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1.
ASYMMETRIC_DIGITS = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
# Keys that make the noise and the subsampling streams independent of the batch orders.
_NOISE_KEY = 0x4E015E
_IMBALANCE_KEY = 0x1A4B_A1A4


def class_targets(counts: Sequence[int], profile: str, ratio: float) -> list[int]:
  """Examples kept per class under ``profile`` (never more than a class has)."""
  counts = [int(n) for n in counts]
  c, n_max = len(counts), max(counts)
  if profile == "none":
    return counts
  if profile == "exponential":
    wanted = [int(n_max * ratio ** (-k / (c - 1))) for k in range(c)]
  elif profile == "step":
    wanted = [n_max if k < c // 2 else int(n_max / ratio) for k in range(c)]
  else:
    raise ValueError(f"class_imbalance.profile={profile!r} is not accepted; expected one of "
                     f"{list(IMBALANCE_PROFILES)}")
  return [max(1, min(w, n)) for w, n in zip(wanted, counts)]


def subsample(labels: np.ndarray, profile: str, ratio: float, *,
              num_classes: int) -> np.ndarray:
  """Sorted indices of the examples kept under the imbalance ``profile``."""
  labels = np.asarray(labels)
  targets = class_targets(np.bincount(labels, minlength=num_classes), profile, ratio)
  kept = []
  for c, n_keep in enumerate(targets):
    members = np.flatnonzero(labels == c)
    kept.append(members[keyed_permutation(len(members), _IMBALANCE_KEY, c)[:n_keep]])
  return np.sort(np.concatenate(kept))


def _flip_targets(labels: np.ndarray, kind: str, seed: int, num_classes: int) -> np.ndarray:
  if kind == "pairflip":
    return (labels + 1) % num_classes
  if kind == "asymmetric":
    return np.asarray([ASYMMETRIC_DIGITS.get(int(y), int(y)) for y in labels], labels.dtype)
  # symmetric: one of the other C - 1 classes, from a keyed hash of the example's index.
  key = np.zeros((), np.uint64)
  for k in (seed, _NOISE_KEY):
    key = splitmix64(key ^ np.uint64(k & 0xFFFFFFFFFFFFFFFF))
  draws = splitmix64(np.arange(len(labels), dtype=np.uint64) ^ key)
  offset = 1 + (draws % np.uint64(num_classes - 1)).astype(labels.dtype)
  return (labels + offset) % num_classes


def corrupt_labels(labels: np.ndarray, kind: str, rate: float, *, seed: int,
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """``(noisy labels, sorted indices of the flipped examples)`` (see the module doc).

  Raises:
    ValueError: an unknown kind, a rate outside [0, 1], or ``asymmetric`` for a
      dataset that does not have 10 classes.
  """
  labels = np.asarray(labels)
  if kind not in NOISE_KINDS:
    raise ValueError(f"label_noise.kind={kind!r} is not accepted; expected one of "
                     f"{list(NOISE_KINDS)}")
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"label_noise.rate={rate!r} is invalid; expected a fraction in [0, 1]")
  if kind == "asymmetric" and num_classes != 10:
    raise ValueError(f"label_noise.kind='asymmetric' is defined for 10 digit classes; the "
                     f"dataset has {num_classes}")
  if kind == "none" or rate == 0:
    return labels.copy(), np.zeros((0,), np.int64)
  targets = _flip_targets(labels, kind, seed, num_classes)
  flipped = []
  for c in range(num_classes):
    members = np.flatnonzero((labels == c) & (targets != labels))
    n_flip = int(round(rate * np.count_nonzero(labels == c))) if len(members) else 0
    flipped.append(members[keyed_permutation(len(members), seed, _NOISE_KEY, c)[:n_flip]])
  flipped = np.sort(np.concatenate(flipped)).astype(np.int64)
  noisy = labels.copy()
  noisy[flipped] = targets[flipped]
  return noisy, flipped


def apply(train: Mapping[str, np.ndarray], *, num_classes: int,
          label_noise: Mapping[str, Any] | None = None,
          class_imbalance: Mapping[str, Any] | None = None
          ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """The train split after subsampling, then label noise; and a record of both.

  Args:
    train: ``{"image", "label", ...}`` of the whole train split.
    num_classes: the dataset's number of classes.
    label_noise: ``{"kind", "rate", "seed"}`` (None or kind ``none``: no noise).
    class_imbalance: ``{"profile", "ratio"}`` (None or profile ``none``: balanced).

  Returns:
    The new split and ``{"kept": indices into train, "flipped": positions in the new
    split, "clean_label": the labels before noise, ...settings}``.
  """
  noise = dict(label_noise or {"kind": "none", "rate": 0.0, "seed": 0})
  imbalance = dict(class_imbalance or {"profile": "none", "ratio": 1.0})
  labels = np.asarray(train["label"])
  kept = np.arange(len(labels))
  if imbalance["profile"] != "none":
    kept = subsample(labels, imbalance["profile"], float(imbalance["ratio"]),
                     num_classes=num_classes)
  split = {k: np.asarray(v)[kept] for k, v in train.items()}
  clean = split["label"].copy()
  split["label"], flipped = corrupt_labels(clean, noise["kind"], float(noise["rate"]),
                                           seed=int(noise["seed"]), num_classes=num_classes)
  return split, {"label_noise": noise, "class_imbalance": imbalance, "kept": kept,
                 "flipped": flipped, "clean_label": clean}


def describe(record: Mapping[str, Any], rows: Mapping[str, np.ndarray],
             labels: Mapping[str, np.ndarray], num_classes: int) -> dict[str, Any]:
  """The JSON record of a corrupted dataset (``data.json`` of a run).

  Args:
    record: what `apply` returned.
    rows: per split carved from train (``train``, ``validation``), its positions in the
      corrupted train split.
    labels: per split (``train``, ``validation``, ``test``), the labels trained and
      evaluated with.
    num_classes: the number of classes.
  """
  flipped = np.zeros(len(record["clean_label"]), bool)
  flipped[record["flipped"]] = True
  out: dict[str, Any] = {"label_noise": dict(record["label_noise"]),
                         "class_imbalance": dict(record["class_imbalance"]), "splits": {}}
  for split, y in labels.items():
    entry = {"examples": int(len(y)),
             "class_counts": np.bincount(y, minlength=num_classes).astype(int).tolist()}
    if split in rows:
      r = np.asarray(rows[split])
      entry["noise_rate"] = float(flipped[r].mean()) if len(r) else math.nan
      entry["flipped"] = [{"index": int(record["kept"][i]), "clean": int(record["clean_label"][i]),
                           "noisy": int(y_i)} for i, y_i in zip(r[flipped[r]], y[flipped[r]])]
    out["splits"][split] = entry
  out["noise_rate"] = float(flipped.mean()) if len(flipped) else math.nan
  out["kept_indices"] = np.asarray(record["kept"]).astype(int).tolist()
  return out


def dataset_record(data) -> dict[str, Any]:
  """What a run trained and was evaluated on: class counts per split and, for corrupted
  data, the `describe` record (flipped examples, realised noise rates, kept indices).

  Args:
    data: a loaded `cnnjax.data.Dataset`.
  """
  if "label" not in data.info.fields:  # nothing to count or corrupt (e.g. dense targets)
    return {"label_noise": {"kind": "none"}, "class_imbalance": {"profile": "none"},
            "noise_rate": 0.0, "splits": {s: {"examples": data.num_examples(s)}
                                          for s in data.splits}}
  c = data.info.num_classes
  labels = {s: data.split_arrays(s, dtype=np.uint8)["label"] for s in data.splits}
  if data.corruption is None:
    return {"label_noise": {"kind": "none"}, "class_imbalance": {"profile": "none"},
            "noise_rate": 0.0, "splits": {s: {"examples": int(len(y)), "class_counts":
                                              np.bincount(y, minlength=c).astype(int).tolist()}
                                          for s, y in labels.items()}}
  rows = {s: data.rows(s) for s in ("train", "validation") if s in labels}
  return describe(data.corruption, rows, labels, c)


def summary_of(record: Mapping[str, Any]) -> dict[str, Any]:
  """The short form of a `dataset_record` kept in a run's summary (no index lists)."""
  out = {"noise_rate": record["noise_rate"],
         "label_noise": record["label_noise"], "class_imbalance": record["class_imbalance"]}
  for split, entry in record["splits"].items():
    if "class_counts" in entry:
      out[f"{split}_class_counts"] = entry["class_counts"]
    if "noise_rate" in entry:
      out[f"{split}_noise_rate"] = entry["noise_rate"]
  return out
