"""Runs side by side, one per device, each epoch one compiled call: the study's CPU programs.

A study group's runs share one single-run step (`cnnjax.study.vmapped`). On a CPU, a small
network's step at batch 32 keeps the cores busy only part of the time: between its many
small operations XLA hands work from thread to thread, and Python dispatches every step
(`bn_cnn` on digits: its operations busy 48 % of a step, docs/studies.md). Two changes
fill those gaps without changing what a run computes:

* **An epoch per call**: the epoch's batches go to the device at once and a `lax.scan`
  over the single-run step trains them, so Python dispatches once per epoch (or per
  chunk of it, `chunk_steps`), not once per step.
* **Lanes**: ``L`` runs train side by side, run ``l`` on device ``l`` of a mesh, in one
  `jax.shard_map` program with no communication between lanes. On a CPU the devices are
  the process's CPU devices (``jax_num_cpu_devices``, which the study commands set to the
  number of cores, `cpu_device_count`); each lane's thunks fill the other lane's gaps.

Every lane computes its run's own single-run step, with its own batches, key, learning
rate, loss and optimizer choice (values in its state): a lane never reads another lane's
data. `lane_count` picks ``L``; one lane is the ``"sequential"`` strategy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["LANE_AXIS", "EPOCH_CHUNK_BYTES", "LanePrograms", "chunk_steps", "cpu_cores",
           "cpu_device_count", "lane_count"]

LANE_AXIS = "lane"
# Host batches one compiled call may take (all lanes together): an epoch of digits or
# mnist_5k at batch 32 is far below it; a CIFAR-10 epoch (~600 MiB per lane) is split.
EPOCH_CHUNK_BYTES = 64 * 2**20


def cpu_cores() -> int:
  """The cores this process may run on (its CPU affinity where the OS reports it)."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def cpu_device_count() -> int:
  """How many CPU devices a study process asks JAX for: one per core, at most 8."""
  return max(1, min(cpu_cores(), 8))


def lane_count(k_runs: int, devices: Sequence[Any] | None = None) -> int:
  """``L`` for ``k_runs`` runs: one per device, no more than the runs, and on a CPU no more
  than its cores (extra fake CPU devices would only take turns on the same cores).

  Example:
    >>> lane_count(1)
    1
  """
  devices = list(jax.local_devices() if devices is None else devices)
  limit = len(devices)
  if devices and devices[0].platform == "cpu":
    limit = min(limit, cpu_cores())
  return max(1, min(k_runs, limit))


def chunk_steps(steps_per_epoch: int, last_epoch_steps: int, bytes_per_step: int,
                budget: int = EPOCH_CHUNK_BYTES) -> int:
  """Steps per compiled call: the largest divisor of both epoch lengths (the last epoch
  may be shorter) whose batches fit ``budget`` bytes, so one program serves every call.

  Examples:
    >>> chunk_steps(36, 36, 8_192)
    36
    >>> chunk_steps(1562, 1562, 393_216 * 2, budget=64 * 2**20)  # CIFAR-10, 2 lanes
    71
    >>> chunk_steps(40, 25, 1)   # gcd 5
    5
  """
  common = math.gcd(steps_per_epoch, last_epoch_steps)
  fits = max(1, budget // max(1, bytes_per_step))
  return max(d for d in range(1, common + 1) if common % d == 0 and d <= fits)


class LanePrograms:
  """The training and evaluation programs of ``L`` lanes (one device each).

  Args:
    one_train: ``(state, batch [B, ...], rng, loss_index) -> (state, metrics)``, one run's
      step (no leading run axis).
    one_eval: ``(state, batch, loss_index) -> summed metrics`` of one run.
    devices: the ``L`` devices, lane ``l`` on ``devices[l]``.

  Attributes:
    train: jitted ``(state [L, ...], batches [L, S, B, ...], rngs [L], loss_index [L])
      -> (state, metrics {name: [L, S]})``: ``S`` steps of each lane's run (the state is
      donated).
    eval: jitted ``(state [L, ...], batch [B, ...], loss_index [L]) -> metrics [L, ...]``:
      the batch (shared by all runs) goes to every lane.
  """

  def __init__(self, one_train: Callable, one_eval: Callable, devices: Sequence[Any]):
    self.devices = list(devices)
    self.mesh = Mesh(np.asarray(self.devices), (LANE_AXIS,))
    self.sharding = NamedSharding(self.mesh, PartitionSpec(LANE_AXIS))
    lead = lambda t: jax.tree.map(lambda x: x[None], t)
    drop = lambda t: jax.tree.map(lambda x: x[0], t)

    def lane_steps(state, batches, rngs, index):
      # One device's share: a leading axis of 1 on every argument.
      rng, i = rngs[0], index[0]
      state, metrics = lax.scan(lambda s, b: one_train(s, b, rng, i), drop(state),
                                drop(batches))
      return lead(state), lead(metrics)

    def lane_eval(state, batch, index):
      return lead(one_eval(drop(state), batch, index[0]))

    lanes, shared = PartitionSpec(LANE_AXIS), PartitionSpec()
    # No collectives: each lane's program depends on its own shard only.
    self.train = jax.jit(jax.shard_map(lane_steps, mesh=self.mesh, in_specs=(lanes,) * 4,
                                       out_specs=(lanes, lanes), check_vma=False),
                         donate_argnums=0)
    self.eval = jax.jit(jax.shard_map(lane_eval, mesh=self.mesh,
                                      in_specs=(lanes, shared, lanes), out_specs=lanes,
                                      check_vma=False))

  @property
  def size(self) -> int:
    return len(self.devices)

  def put(self, tree: Any) -> Any:
    """``tree`` (leading axis ``L``) split over the lanes."""
    return jax.device_put(tree, self.sharding)
