"""Test-wide setup: 8 fake CPU devices, so multi-device code runs in every test run.

Tests that mean a single device say so with ``parallel="none"``.
"""

import os
import tempfile

# Must happen before JAX initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

from cnnjax import cpu_runtime  # noqa: E402

# What every cnnjax entry point (experiments/cli.py) does before JAX's first computation.
cpu_runtime.configure()

jax.config.update("jax_num_cpu_devices", 8)

# One persistent compilation cache per test run, shared by every test, subprocess
# and xdist worker of that run: many tests compile the same train step, and a
# cached executable is exactly the one a fresh compile would produce. A new
# directory each run, so nothing carries over between runs.
if "CNNJAX_TEST_COMPILATION_CACHE" not in os.environ:
  os.environ["CNNJAX_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="cnnjax-jax-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["CNNJAX_TEST_COMPILATION_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One prepared-data directory for the whole session (digits is prepared once)."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))
