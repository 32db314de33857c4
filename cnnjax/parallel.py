"""Data-parallel execution: one pure step, three ways to run it.

* ``none``: `jax.jit` on one device.
* ``pmap``: `jax.pmap` over the local devices; the step averages gradients
  and metrics with `lax.pmean` over ``AXIS``.
* ``sharded``: `jax.jit` over a `Mesh` of every device (all processes); the
  batch is split on the ``data`` axis, the state replicated, and XLA inserts
  the collectives.

Everything that depends on the mode lives here; the steps and the loop do not
branch on it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"
MODES = ("auto", "none", "pmap", "sharded")
BN_SYNC = ("global", "per_device")

# Environment variables that say "this process is one of several".
_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed(enabled: bool) -> bool:
  """Starts JAX's distributed runtime when asked or when a cluster is detected.

  The coordinator address, process count and id come from the cluster's own
  environment (SLURM, Open MPI, TPU pods) or from ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. Must run before any other JAX
  call. Returns whether the runtime was initialised.
  """
  detected = any(int(os.environ.get(k, "1") or 1) > 1 if k.endswith(("NTASKS", "SIZE"))
                 else bool(os.environ.get(k)) for k in _CLUSTER_ENV)
  explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
  if not (enabled or detected or explicit):
    return False
  if jax.config.jax_platforms in (None, "", "cpu") and not _has_accelerator_env():
    # Cross-process collectives on CPU need an implementation; gloo ships with jaxlib.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)
  return True


def _has_accelerator_env() -> bool:
  return bool(os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("TPU_WORKER_HOSTNAMES"))


def resolve_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"parallel={mode!r} is not a parallel mode; expected one of {list(MODES)}")
  if mode == "auto":
    return "sharded" if jax.device_count() > 1 else "none"
  return mode


@dataclasses.dataclass
class Parallel:
  """How a run places its state and batches and compiles its steps."""

  mode: str
  bn_sync: str = "global"

  def __post_init__(self):
    self.mode = resolve_mode(self.mode)
    if self.bn_sync not in BN_SYNC:
      raise ValueError(f"bn_sync={self.bn_sync!r} is not accepted; expected one of {list(BN_SYNC)}")
    if self.mode == "none":
      self.devices = jax.local_devices()[:1]
    elif self.mode == "pmap":
      self.devices = jax.local_devices()
    else:
      self.devices = jax.devices()
      self.mesh = Mesh(np.asarray(self.devices), ("data",))
      self._replicated = NamedSharding(self.mesh, P())
      self._data = NamedSharding(self.mesh, P("data"))

  @property
  def num_devices(self) -> int:
    """Devices the global batch is split over (all processes)."""
    if self.mode == "none":
      return 1
    if self.mode == "pmap":
      return jax.local_device_count() * jax.process_count()
    return len(self.devices)

  @property
  def is_main_process(self) -> bool:
    return jax.process_index() == 0

  def check_batch_size(self, batch_size: int, key: str = "batch_size") -> None:
    n = self.num_devices * (1 if self.mode != "none" else jax.process_count())
    if batch_size % n:
      raise ValueError(
          f"{key}={batch_size} must be divisible by the number of devices ({n}) in parallel mode "
          f"{self.mode!r}")

  def model_kwargs(self) -> dict[str, Any]:
    """BatchNorm settings that make ``bn_sync`` true in this mode."""
    if self.mode == "pmap" and self.bn_sync == "global":
      return {"bn_axis_name": AXIS}
    if self.mode == "sharded" and self.bn_sync == "per_device" and self.num_devices > 1:
      return {"bn_ghost_batches": self.num_devices}
    return {}

  # Compilation.
  def compile_train(self, step: Callable) -> Callable:
    """``step(state, batch, rng, *, axis_name)`` compiled for this mode; donates the state."""
    if self.mode == "none":
      return jax.jit(step, donate_argnums=0)
    if self.mode == "pmap":
      return jax.pmap(functools.partial(step, axis_name=AXIS), axis_name=AXIS,
                      in_axes=(0, 0, None), donate_argnums=0)
    return jax.jit(step, in_shardings=(self._replicated, self._data, self._replicated),
                   out_shardings=(self._replicated, self._replicated), donate_argnums=0)

  def compile_eval(self, step: Callable) -> Callable:
    if self.mode == "none":
      return jax.jit(step)
    if self.mode == "pmap":
      return jax.pmap(functools.partial(step, axis_name=AXIS), axis_name=AXIS)
    return jax.jit(step, in_shardings=(self._replicated, self._data),
                   out_shardings=self._replicated)

  # Placement.
  def put_state(self, state):
    if self.mode == "none":
      return jax.device_put(state, self.devices[0])
    if self.mode == "pmap":
      n = len(self.devices)
      return jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * n), state)
    return jax.device_put(state, self._replicated)

  def get_state(self, state):
    """A single, un-replicated copy of the state (for checkpoints and eval on host)."""
    if self.mode == "pmap":
      return jax.tree.map(lambda x: x[0], state)
    return state

  def put_batch(self, batch: dict[str, np.ndarray]):
    """This process's share of a global batch, placed for the step."""
    if self.mode == "none":
      return batch
    if self.mode == "pmap":
      n = len(self.devices)
      return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(self._data, v) for k, v in batch.items()}

  def fetch(self, metrics) -> dict[str, Any]:
    """Metrics to host numpy; the only place the host waits for the devices."""
    metrics = jax.device_get(metrics)
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return metrics
