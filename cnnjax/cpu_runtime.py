"""Process-wide settings that let XLA:CPU run a training step at full speed.

Nothing here runs on import. The entry points under ``experiments/`` call
`configure` first thing (before JAX starts its CPU backend); a program that uses
cnnjax as a library calls it itself, before its first JAX computation, to get the
same speed:

    >>> from cnnjax import cpu_runtime
    >>> applied = cpu_runtime.configure()   # doctest: +SKIP

It applies the settings below, each of which a user's own choice overrides:

* **XLA flags**, appended to ``XLA_FLAGS`` (each skipped when ``XLA_FLAGS``
  already names it; they only take effect if set before JAX's first
  computation):

  - ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``:
    XLA:CPU runs convolutions with its Eigen kernels instead of YNNPACK, ~1.8x
    faster for every convolution of the models here (mnist_cnn conv2 forward
    17.2 -> 9.5 ms at batch 128).
  - ``--xla_cpu_copy_insertion_use_region_analysis=true``: with the train
    state donated, XLA otherwise copies each weight that a YNNPACK matrix
    multiply reads before updating it in place (12.8 MB for mnist_cnn's fc1,
    6 ms per step on one core); the finer analysis proves the copy
    unnecessary. mnist_cnn 1,750-1,848 -> 1,882-1,927 images/s,
    keras_cifar_cnn +1% (same process, alternating windows).
  - ``--xla_cpu_prefer_vector_width=512``, only on CPUs with AVX-512: XLA's
    own loops (pooling, its gradient, Adam) use 512-bit vectors instead of
    256-bit ones. mnist_cnn 1,975-1,988 -> 2,018-2,029 images/s,
    keras_cifar_cnn unchanged (3,948-3,973 vs 3,987-3,997; same process).

* **glibc malloc thresholds** (Linux with glibc only). An XLA:CPU executable
  allocates all its temporaries as one block per call (44 MB for mnist_cnn's
  train step at batch 128). glibc serves blocks above ``M_MMAP_THRESHOLD``
  (128 KiB to 32 MiB, adaptive) with a fresh ``mmap`` and unmaps them on free,
  so every step page-faults the whole block in again: 11,300 minor faults per
  step measured. Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` keeps
  freed blocks in the heap for the next step (680 faults per step; mnist_cnn
  1,625 -> 1,854 images/s on 2 cores, docs/performance.md). The cost: memory
  freed by the process is kept for reuse rather than returned to the system.
  The same page-fault effect is why PyTorch's CPU tuning guides recommend
  jemalloc or tcmalloc. Limit: a block allocated by a worker thread comes
  from a per-thread arena whose heaps hold at most 64 MiB, so a larger
  temporary is still mapped per call (limiting glibc to one arena removes
  that but cost keras_cifar_cnn 15% from lock contention). Skipped when
  ``CNNJAX_TUNE_MALLOC=0`` or when the user sets ``MALLOC_MMAP_THRESHOLD_`` /
  ``MALLOC_TRIM_THRESHOLD_`` themselves.

`settings()` reports what was applied; `manifest.json` records it.
"""

from __future__ import annotations

import ctypes
import os
import platform

CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
COPY_FLAG = "--xla_cpu_copy_insertion_use_region_analysis=true"
VECTOR_FLAG = "--xla_cpu_prefer_vector_width=512"


def _has_avx512() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      return any(line.startswith("flags") and " avx512f" in line for line in f)
  except OSError:
    return False


def xla_cpu_flags() -> tuple[str, ...]:
  """The XLA flags `configure` adds (the vector-width flag only on AVX-512 CPUs)."""
  return (CONV_FLAG, COPY_FLAG) + ((VECTOR_FLAG,) if _has_avx512() else ())

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks up to 1 GiB come from (and return to) the heap; up to 2 GiB of free
# heap is kept before it is given back to the system.
MMAP_THRESHOLD_BYTES = 2**30
TRIM_THRESHOLD_BYTES = 2**31 - 1

_applied: dict[str, object] = {"xla_flags": None, "malloc": None}


def _set_xla_flags() -> list[str]:
  added = []
  for flag in xla_cpu_flags():
    flags = os.environ.get("XLA_FLAGS", "")
    if flag.split("=", 1)[0] not in flags:
      os.environ["XLA_FLAGS"] = (flags + " " + flag).strip()
      added.append(flag)
  return added


def _tune_malloc() -> dict[str, int] | None:
  if os.environ.get("CNNJAX_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
    return None
  if any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
    return None
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return None
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  mallopt.restype = ctypes.c_int
  applied = {}
  # The trim threshold first: setting the mmap threshold alone fixes the trim
  # threshold at its 128 KiB default, which trims the heap after every step.
  for name, param, value in (("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                             ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)):
    if mallopt(param, value) == 1:
      applied[name] = value
  return applied or None


def configure() -> dict[str, object]:
  """Applies both settings once per process (idempotent); returns `settings()`."""
  if _applied["xla_flags"] is None:
    _applied["xla_flags"] = _set_xla_flags()
  if _applied["malloc"] is None:
    _applied["malloc"] = _tune_malloc()
  return settings()


def settings() -> dict[str, object]:
  """What `configure` changed: the XLA flags it added and the malloc parameters it set.

  Examples:
    >>> sorted(settings())
    ['malloc', 'xla_flags']
  """
  return dict(_applied)
