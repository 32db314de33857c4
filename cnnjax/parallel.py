"""Data-parallel execution: one pure step, three ways to run it.

* ``none``: `jax.jit` on one device (one process only).
* ``pmap``: `jax.pmap` over this process's devices; the step averages
  gradients and metrics with `lax.pmean` over ``AXIS``, which spans the
  devices of every process.
* ``sharded``: `jax.jit` over a `Mesh` of every device of every process; the
  batch is split on the ``data`` axis, the state replicated, and XLA inserts
  the collectives.
* ``auto``: ``sharded`` when there is more than one device, else ``none``.

Everything that depends on the mode lives here; the steps and the loop do not
branch on it. ``bn_sync`` says what BatchNorm normalizes over: ``"global"``
(the whole global batch, so every mode and device count computes what one
device would on the same batch) or ``"per_device"`` (each device's share,
"ghost batches" of ``global_batch / num_devices`` examples). See
docs/parallel.md.

Example (one process, any number of devices):
  >>> par = Parallel("auto")
  >>> par.mode in ("none", "sharded")
  True
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"       # pmap axis name (and BatchNorm's axis under pmap)
DATA_AXIS = "data"   # mesh axis the batch is split over in sharded mode
MODES = ("auto", "none", "pmap", "sharded")
BN_SYNC = ("global", "per_device")

_EXPLICIT_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _int_env(env: Mapping[str, str], key: str, default: int = 1) -> int:
  value = env.get(key, "")
  try:
    return int(value) if value.strip() else default
  except ValueError:
    raise ValueError(f"environment variable {key}={value!r} is not an integer") from None


def detect_cluster(env: Mapping[str, str] | None = None) -> str | None:
  """The kind of multi-process launch described by ``env``, or None for a lone process.

  Returns ``"explicit"`` (``JAX_COORDINATOR_ADDRESS`` is set), ``"slurm"``
  (``SLURM_NTASKS`` > 1 inside a job step), ``"openmpi"``
  (``OMPI_COMM_WORLD_SIZE`` > 1), ``"tpu_pod"`` (more than one host in
  ``TPU_WORKER_HOSTNAMES``, or a multislice ``MEGASCALE_COORDINATOR_ADDRESS``),
  or None. A single-task SLURM job or a single-host TPU VM is a lone process.

  Example:
    >>> detect_cluster({"SLURM_NTASKS": "16", "SLURM_PROCID": "3", "SLURM_JOB_ID": "7"})
    'slurm'
    >>> detect_cluster({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}) is None
    True
  """
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "explicit"
  if "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and _int_env(env, "SLURM_NTASKS") > 1:
    return "slurm"
  if _int_env(env, "OMPI_COMM_WORLD_SIZE") > 1:
    return "openmpi"
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu_pod"
  return None


def maybe_initialize_distributed(enabled: bool, env: Mapping[str, str] | None = None) -> bool:
  """Starts JAX's multi-process runtime when asked to or when a cluster launched us.

  Must run before any other JAX call that touches devices. The coordinator
  address, process count and id come from ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` when set, else from the
  cluster's own environment (SLURM, Open MPI, TPU pods: jax detects them).
  CPU processes exchange collectives over gloo, which ships with jaxlib.

  Args:
    enabled: ``config.distributed``; True initialises even when no cluster is
      detected (jax then auto-detects, and fails loudly if it cannot).
    env: the environment to read (default ``os.environ``).

  Returns:
    Whether the runtime is (now) initialised.

  Raises:
    ValueError: ``JAX_COORDINATOR_ADDRESS`` is set without
      ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (or they are not integers).
  """
  env = os.environ if env is None else env
  kind = detect_cluster(env)
  if not (enabled or kind):
    return False
  if jax.distributed.is_initialized():
    return True
  kwargs: dict[str, Any] = {}
  if kind == "explicit":
    missing = [k for k in _EXPLICIT_ENV if not env.get(k)]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not; set all "
                       f"of {', '.join(_EXPLICIT_ENV)}")
    kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                  num_processes=_int_env(env, "JAX_NUM_PROCESSES"),
                  process_id=_int_env(env, "JAX_PROCESS_ID", 0))
  # Only the CPU backend reads this; without it cross-process CPU collectives
  # fail at the first step ("no CPU collectives implementation").
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  return True


def resolve_mode(mode: str) -> str:
  """``mode`` with ``auto`` replaced by what it means on the visible devices."""
  if mode not in MODES:
    raise ValueError(f"parallel={mode!r} is not a parallel mode; expected one of {list(MODES)}")
  if mode == "auto":
    return "sharded" if jax.device_count() > 1 else "none"
  return mode


def _global_devices() -> list:
  # Process-major order: process p's devices hold rows p*b:(p+1)*b of the
  # global batch, the rows `Dataset.train_batches` gives process p.
  return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


@dataclasses.dataclass
class Parallel:
  """How a run places its state and batches and compiles its steps.

  Attributes:
    mode: one of `MODES` (``auto`` is resolved on construction).
    bn_sync: one of `BN_SYNC`.
  """

  mode: str
  bn_sync: str = "global"

  def __post_init__(self):
    self.mode = resolve_mode(self.mode)
    if self.bn_sync not in BN_SYNC:
      raise ValueError(f"bn_sync={self.bn_sync!r} is not accepted; expected one of {list(BN_SYNC)}")
    if self.mode == "none" and jax.process_count() > 1:
      raise ValueError(f"parallel='none' trains on one device but this run has "
                       f"{jax.process_count()} processes; use parallel='sharded' (or 'auto')")
    if self.mode == "none":
      self.devices = jax.local_devices()[:1]
    elif self.mode == "pmap":
      self.devices = jax.local_devices()
    else:
      self.devices = _global_devices()
    # Every mode keeps a replicated sharding over all devices: sharded mode
    # uses it for the state, the others for multi-process checkpoints.
    self.mesh = Mesh(np.asarray(_global_devices() if self.mode != "none" else self.devices),
                     (DATA_AXIS,))
    self._replicated = NamedSharding(self.mesh, P())
    self._data = NamedSharding(self.mesh, P(DATA_AXIS))

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
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0

  def check_batch_size(self, batch_size: int, key: str = "batch_size") -> None:
    """Raises ValueError unless ``batch_size`` splits evenly over the devices."""
    n = self.num_devices
    if batch_size % n:
      raise ValueError(
          f"{key}={batch_size} must be divisible by the number of devices ({n}) in parallel mode "
          f"{self.mode!r}; use a multiple of {n}")

  def model_kwargs(self) -> dict[str, Any]:
    """BatchNorm settings that make ``bn_sync`` true in this mode.

    pmap: each device sees its share only, so ``global`` needs a cross-device
    mean (``bn_axis_name``) and ``per_device`` is what it does anyway.
    sharded: the step sees the global batch, so ``global`` is what it does
    anyway and ``per_device`` needs one ghost batch per device, cut in the
    same contiguous blocks as the ``data`` sharding.
    """
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
    """``step(state, batch, *, axis_name)`` compiled for this mode; outputs are global sums."""
    if self.mode == "none":
      return jax.jit(step)
    if self.mode == "pmap":
      return jax.pmap(functools.partial(step, axis_name=AXIS), axis_name=AXIS)
    return jax.jit(step, in_shardings=(self._replicated, self._data),
                   out_shardings=self._replicated)

  def precompile(self, fn: Callable, *args) -> Callable:
    """``fn`` (from `compile_train`/`compile_eval`) compiled ahead of time for ``args``.

    Multi-process pmap is left to compile on its first call: with jax 0.10 an
    ahead-of-time pmap executable rejects the process-local arrays it is
    called with ("Argument types differ ..."), while the jitted call works.
    """
    if self.mode == "pmap" and jax.process_count() > 1:
      return fn
    return fn.lower(*args).compile()

  # Placement.
  def _replicate_global(self, tree):
    """Host values (equal on every process) as arrays replicated on every device.

    Built from each process's own copy, so it works when the mesh spans
    devices this process cannot address (where ``jax.device_put`` of a local
    array would need a cross-process transfer).
    """
    def put(x):
      host = np.asarray(jax.device_get(x))
      return jax.make_array_from_callback(host.shape, self._replicated, lambda idx: host[idx])
    return jax.tree.map(put, tree)

  def put_state(self, state):
    """``state`` (one host or single-device copy) placed for the compiled steps."""
    if self.mode == "none":
      return jax.device_put(state, self.devices[0])
    if self.mode == "pmap":
      n = len(self.devices)
      stacked = jax.tree.map(
          lambda x: np.broadcast_to(np.asarray(jax.device_get(x)), (n, *np.shape(x))), state)
      # One identity pmap places every leaf on its device (one compile).
      return jax.pmap(lambda t: t, devices=self.devices)(stacked)
    return self._replicate_global(state)

  def get_state(self, state):
    """One un-replicated copy of the state, restorable in any mode and device count.

    With several processes the copy is an array replicated over every device
    (the form orbax saves collectively, each process writing its part once);
    with one process it is a plain single-device array.
    """
    if self.mode == "none":
      return state
    if jax.process_count() > 1:
      return state if self.mode == "sharded" else self._replicate_global(self.fetch(state))
    # One device's copy: orbax then writes plain arrays, ~10x faster on CPU
    # than slicing an array replicated over many devices.
    return jax.device_put(self.fetch(state), self.devices[0])

  def put_batch(self, batch: dict[str, np.ndarray]):
    """This process's share of a global batch, placed for the step."""
    if self.mode == "none":
      return batch
    if self.mode == "pmap":
      n = len(self.devices)
      return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(self._data, v) for k, v in batch.items()}

  def fetch(self, tree) -> Any:
    """Step outputs (metrics, eval sums) to host numpy; where the host waits for the devices.

    Outputs are identical on every device (pmean/psum in pmap, replicated
    out_shardings in sharded mode), so one addressable copy is the value, even
    when the array spans other processes' devices.
    """
    def one(x):
      if self.mode == "pmap":
        # Device 0's shard keeps the mapped axis (length 1): drop it.
        return np.asarray(x.addressable_data(0)).reshape(x.shape[1:])
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
          return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
      return np.asarray(x)
    return jax.tree.map(one, tree)

  def any_process(self, flag: bool) -> bool:
    """True when ``flag`` is true on any process (a collective: every process must call it)."""
    if jax.process_count() == 1:
      return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray([int(bool(flag))], np.int32))
    return bool(np.max(flags))
