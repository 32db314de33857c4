"""Compiles ``conv.cc`` and ``batch_norm.cc`` into one shared library on first use and caches it on disk.

The library is built for the CPU it runs on (``-march=native``) with the C++
compiler ``$CXX`` (default ``g++``) against the XLA FFI headers that ship with
jaxlib (`jax.ffi.include_dir`). It lands in ``$CNNJAX_NATIVE_CACHE`` (default
``~/.cache/cnnjax/native``) under a name that hashes the source, the compiler's
path and version, the jaxlib version, the C library's version and the CPU's flags, so
a change of any of them builds afresh and a stale library is never loaded. The build
writes a temporary file and renames it into place, so concurrent processes (test
workers) never see half a file.

`library()` raises `NativeUnavailable` with the reason when there is no x86-64
CPU with AVX-512, no compiler, or the build fails; callers fall back to XLA's own
kernels (`cnnjax.native.available`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from cnnjax.native import blocks

CACHE_ENV = "CNNJAX_NATIVE_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/cnnjax/native"
# The sources compiled into the library, and the header they share.
SOURCES = ("conv.cc", "batch_norm.cc")
HEADERS = ("parallel.h",)
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")


class NativeUnavailable(RuntimeError):
  """The native kernels cannot be built or loaded here; the message says why."""


def cpu_flags() -> frozenset[str]:
  """The CPU feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def _compiler() -> str:
  cxx = os.environ.get("CXX", "g++")
  path = shutil.which(cxx)
  if path is None:
    raise NativeUnavailable(f"no C++ compiler {cxx!r} on PATH (set CXX to one)")
  return path


BUILD_TIMEOUT_SECONDS = 300


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
  try:
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False,
                          timeout=BUILD_TIMEOUT_SECONDS)
  except subprocess.TimeoutExpired as e:
    raise NativeUnavailable(f"{cmd[0]} took over {BUILD_TIMEOUT_SECONDS} s") from e


@functools.cache
def library() -> Path:
  """The path of the compiled library, building it if this CPU/compiler/source has none."""
  if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
    raise NativeUnavailable(f"built for Linux x86-64 only, this is "
                            f"{platform.system()} {platform.machine()}")
  if "avx512f" not in cpu_flags():
    raise NativeUnavailable("the CPU has no AVX-512 (avx512f)")
  import jax
  import jaxlib

  cxx = _compiler()
  version = _run([cxx, "--version"]).stdout.splitlines()[:1]
  texts = {name: Path(__file__).with_name(name).read_text() for name in SOURCES + HEADERS}
  generated = blocks.source()
  key = hashlib.sha256("\n".join(
      [*texts.values(), generated, cxx, *version, jaxlib.__version__, " ".join(FLAGS),
       " ".join(platform.libc_ver()), " ".join(sorted(cpu_flags()))]).encode()).hexdigest()[:16]
  cache = Path(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR))
  target = cache / f"libcnnjax_conv-{key}.so"
  if target.exists():
    return target
  cache.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache) as tmp:
    for name, text in texts.items():
      Path(tmp, name).write_text(text)
    Path(tmp, "blocks.inc").write_text(generated)
    out = Path(tmp, target.name)
    result = _run([cxx, *FLAGS, "-isystem", jax.ffi.include_dir(), "-o", str(out),
                   *(str(Path(tmp, name)) for name in SOURCES)])
    if result.returncode != 0:
      tail = " ".join(result.stderr.strip().splitlines()[-3:])
      raise NativeUnavailable(f"{cxx} failed to build {' + '.join(SOURCES)}: {tail}")
    os.replace(out, target)
  return target
