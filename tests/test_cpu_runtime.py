"""cnnjax.cpu_runtime: the process-wide XLA flag and glibc malloc settings."""

import json
import os
import platform
import subprocess
import sys

import pytest

from cnnjax import cpu_runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A jitted function whose temporaries XLA:CPU allocates as one ~42 MB block per
# call: above glibc's largest adaptive mmap threshold (32 MiB), below the
# 64 MiB a thread arena can hold.
_PROBE = r"""
import json, resource
from cnnjax import cpu_runtime
import cnnjax.models.fast_ops  # applies cpu_runtime.configure()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.cumsum(jnp.cumsum(jnp.sin(x), axis=0), axis=1).sum())
x = jnp.ones((2304, 2304))
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
for _ in range(3):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print(json.dumps({"temp_bytes": temp, "faults_per_call": faults,
                  "settings": cpu_runtime.settings()}))
"""


def _probe(**env_overrides: str) -> dict:
  env = dict(os.environ, PYTHONPATH=REPO, **env_overrides)
  for name in ("XLA_FLAGS", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
               "CNNJAX_TUNE_MALLOC"):
    if name not in env_overrides:
      env.pop(name, None)
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_flags_are_in_xla_flags_of_this_process():
  # conftest applies them before JAX starts, as importing cnnjax.models does.
  for flag in cpu_runtime.XLA_CPU_FLAGS:
    assert flag in os.environ["XLA_FLAGS"]
  assert sorted(cpu_runtime.settings()) == ["malloc", "xla_flags"]


def test_configure_is_idempotent():
  first = cpu_runtime.configure()
  assert cpu_runtime.configure() == first
  for flag in cpu_runtime.XLA_CPU_FLAGS:
    assert os.environ["XLA_FLAGS"].count(flag.split("=", 1)[0]) == 1


@pytest.mark.skipif(not GLIBC, reason="malloc tuning applies to glibc only")
def test_malloc_tuning_stops_per_call_page_faults():
  tuned = _probe()
  untuned = _probe(CNNJAX_TUNE_MALLOC="0")
  assert tuned["temp_bytes"] > 32 * 2**20
  assert tuned["settings"]["malloc"] == {
      "M_TRIM_THRESHOLD": cpu_runtime.TRIM_THRESHOLD_BYTES,
      "M_MMAP_THRESHOLD": cpu_runtime.MMAP_THRESHOLD_BYTES}
  assert untuned["settings"]["malloc"] is None
  # Untuned, every call maps its temporaries afresh: one minor fault per 4 KiB page.
  pages = tuned["temp_bytes"] / 4096
  assert untuned["faults_per_call"] > 0.5 * pages
  # Tuned, the block is reused (measured: 2-830 faults per call over runs, vs ~11,000).
  assert tuned["faults_per_call"] < 0.2 * pages


@pytest.mark.skipif(not GLIBC, reason="malloc tuning applies to glibc only")
def test_user_malloc_settings_win():
  probe = _probe(MALLOC_MMAP_THRESHOLD_="131072")
  assert probe["settings"]["malloc"] is None


def test_user_xla_flag_wins():
  probe = _probe(XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=dot")
  assert probe["settings"]["xla_flags"] == [
      f for f in cpu_runtime.XLA_CPU_FLAGS if f != cpu_runtime.CONV_FLAG]
