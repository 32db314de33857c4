"""cnnjax.cpu_runtime: the process-wide XLA flags and glibc malloc settings, applied only
when asked (`configure`), never on import.

Two subprocess probes run the same jitted function whose temporaries XLA:CPU allocates as
one ~42 MB block per call (above glibc's largest adaptive mmap threshold, 32 MiB, below
the 64 MiB a thread arena holds), counting minor page faults per call: one imports every
cnnjax module and calls `configure`, the other imports every cnnjax module only. The
second must leave ``os.environ`` exactly as it found it and fault like an untuned process.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

from cnnjax import cpu_runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

_PROBE = r"""
import importlib, json, os, pkgutil, resource, sys
before = dict(os.environ)
import cnnjax
modules = sorted(m.name for m in pkgutil.walk_packages(cnnjax.__path__, "cnnjax."))
for name in modules:
  importlib.import_module(name)
env_after_import = dict(os.environ)
from cnnjax import cpu_runtime
if sys.argv[1] == "configure":
  cpu_runtime.configure()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.cumsum(jnp.cumsum(jnp.sin(x), axis=0), axis=1).sum())
x = jnp.ones((2304, 2304))
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
for _ in range(3):
  f(x).block_until_ready()
# The least of eight windows of 5 calls: the kernel may reclaim idle pages now and then
# (and the process then faults them back), which is not what this measures.
windows = []
for _ in range(8):
  start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    f(x).block_until_ready()
  windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5)
faults = min(windows)
print(json.dumps({"temp_bytes": temp, "faults_per_call": faults, "modules": modules,
                  "settings": cpu_runtime.settings(),
                  "env_changed_by_import": sorted(
                      k for k in set(before) | set(env_after_import)
                      if before.get(k) != env_after_import.get(k)),
                  "experiments_imported": [m for m in sys.modules if m.startswith("experiments")]}))
"""


def _probe(mode: str) -> dict:
  env = dict(os.environ, PYTHONPATH=REPO)
  for name in ("XLA_FLAGS", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
               "CNNJAX_TUNE_MALLOC"):
    env.pop(name, None)
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probes():
  return {"configured": _probe("configure"), "imported_only": _probe("import")}


def test_importing_every_module_changes_nothing(probes):
  imported = probes["imported_only"]
  assert len(imported["modules"]) > 30  # the walk really imported the package
  assert imported["env_changed_by_import"] == []
  assert imported["settings"] == {"xla_flags": None, "malloc": None}
  assert imported["experiments_imported"] == []


@pytest.mark.skipif(not GLIBC, reason="malloc tuning applies to glibc only")
def test_malloc_tuning_stops_per_call_page_faults(probes):
  tuned, untuned = probes["configured"], probes["imported_only"]
  assert tuned["temp_bytes"] > 32 * 2**20
  assert tuned["settings"]["malloc"] == {
      "M_TRIM_THRESHOLD": cpu_runtime.TRIM_THRESHOLD_BYTES,
      "M_MMAP_THRESHOLD": cpu_runtime.MMAP_THRESHOLD_BYTES}
  assert set(tuned["settings"]["xla_flags"]) == set(cpu_runtime.xla_cpu_flags())
  # Untuned (imports alone touched nothing), every call maps its temporaries afresh:
  # one minor fault per 4 KiB page.
  pages = tuned["temp_bytes"] / 4096
  assert untuned["faults_per_call"] > 0.5 * pages
  # Tuned, the block is reused (measured: 2-830 faults per call over runs, vs ~11,000).
  assert tuned["faults_per_call"] < 0.2 * pages


def test_configure_is_idempotent():
  # conftest calls configure before JAX starts, as the entry points do.
  first = cpu_runtime.configure()
  assert cpu_runtime.configure() == first
  for flag in cpu_runtime.xla_cpu_flags():
    assert os.environ["XLA_FLAGS"].count(flag.split("=", 1)[0]) == 1
  assert sorted(cpu_runtime.settings()) == ["malloc", "xla_flags"]


def test_user_xla_flag_wins(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  added = cpu_runtime._set_xla_flags()  # pylint: disable=protected-access
  assert added == [f for f in cpu_runtime.xla_cpu_flags() if f != cpu_runtime.CONV_FLAG]
  assert os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1


@pytest.mark.skipif(not GLIBC, reason="malloc tuning applies to glibc only")
@pytest.mark.parametrize("env", [{"MALLOC_MMAP_THRESHOLD_": "131072"},
                                 {"CNNJAX_TUNE_MALLOC": "0"}])
def test_user_malloc_settings_win(monkeypatch, env):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert cpu_runtime._tune_malloc() is None  # pylint: disable=protected-access
