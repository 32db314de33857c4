"""Bookkeeping shared by single runs and study groups: running means, the best
validation result, per-epoch records, and summed evaluation over a split."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp


class Means:
  """Running means of scalar step metrics (Python floats, summed in step order).

  Example:
    >>> m = Means()
    >>> m.add({"loss": 1.0}); m.add({"loss": 2.0})
    >>> m.means()
    {'loss': 1.5}
  """

  def __init__(self, sums: Mapping[str, float] | None = None):
    sums = dict(sums or {})
    self.count = int(sums.pop("n", 0))
    self.sums: dict[str, float] = sums

  def add(self, metrics: Mapping[str, Any]) -> None:
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v)
    self.count += 1

  def means(self) -> dict[str, float]:
    return {k: v / self.count for k, v in self.sums.items()} if self.count else {}

  def to_dict(self) -> dict[str, float]:
    """A JSON form (checkpoint metadata); `Means(d)` restores it."""
    return {**self.sums, "n": self.count}


class Best:
  """The best headline value and its epoch; ties keep the earlier epoch.

  Example:
    >>> b = Best("min")
    >>> b.update(0.5, 1), b.update(0.5, 2), b.update(0.4, 3)
    (True, False, True)
    >>> b.value, b.epoch
    (0.4, 3)
  """

  def __init__(self, goal: str = "max", value: float | None = None, epoch: int | None = None):
    self.goal, self.value, self.epoch = goal, value, epoch

  def update(self, value: float, epoch: int) -> bool:
    """Records ``value`` if it strictly improves on the best so far; returns whether it did."""
    if not math.isfinite(value):
      return False
    better = (self.value is None
              or (value > self.value if self.goal == "max" else value < self.value))
    if better:
      self.value, self.epoch = value, epoch
    return better


def epoch_record(epoch: int, step: int, train: Mapping[str, float],
                 train_names: Iterable[str], val: Mapping[str, float] | None) -> dict[str, Any]:
  """``{"epoch", "step", "train_<metric>"..., "val_<metric>"...}`` of one epoch.

  Train metrics that no step contributed (every step skipped) are NaN.
  """
  record: dict[str, Any] = {"epoch": epoch, "step": step}
  for k in train_names:
    record[f"train_{k}"] = train.get(k, float("nan"))
  for k, v in (val or {}).items():
    record[f"val_{k}"] = v
  return record


@jax.jit
def _add(a, b):
  # One compiled program per pytree structure, not one per leaf and batch.
  return jax.tree.map(jnp.add, a, b)


def summed(eval_fn: Callable, state, batches: Iterable[Mapping[str, Any]],
           put: Callable = lambda b: b):
  """Adds up ``eval_fn(state, put(batch))`` over ``batches`` on the device."""
  total = None
  for batch in batches:
    sums = eval_fn(state, put(batch))
    total = sums if total is None else _add(total, sums)
  return total
