"""A reproducibility record of where and with what a run was made."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any

import jax

from cnnjax import cpu_runtime, native
from cnnjax.models import fast_ops
from cnnjax.training import build as build_lib

_PACKAGES = ("cnnjax", "jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "grain",
             "tensorflow-datasets", "ml-collections", "numpy", "scikit-learn")


def package_versions() -> dict[str, str]:
  versions = {}
  for name in _PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = "not installed"
  return versions


def git_commit() -> str | None:
  """The commit of the cnnjax checkout, if it is one (with '-dirty' for local changes)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=5, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return commit + ("-dirty" if dirty else "")


def build(resolved_config: dict[str, Any], par, workdir: str) -> dict[str, Any]:
  return {
      "config": resolved_config,
      "seed": resolved_config.get("seed"),
      "version": package_versions()["cnnjax"],
      "git_commit": git_commit(),
      "packages": package_versions(),
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "command": " ".join(sys.argv),
      "workdir": workdir,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "parallel": par.mode,
      "process_count": jax.process_count(),
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
      "cpu_runtime": cpu_runtime.settings(),
      "fast_ops": fast_ops_formulation(par),
      "compilation_cache": jax.config.jax_compilation_cache_dir,
  }


def fast_ops_formulation(par=None) -> dict[str, Any]:
  """What ``implementation="auto"`` trains with here (under ``par``, a `cnnjax.parallel.Parallel`
  or None for one device), and why not native on a CPU without the kernels."""
  resolved = fast_ops.resolve("auto", batch_sharded=build_lib.batch_sharded(par))
  info: dict[str, Any] = {"auto": resolved}
  if jax.default_backend() == "cpu" and resolved != "native":
    info["native_unavailable"] = native.unavailable_reason() or "the batch is sharded"
  return info
