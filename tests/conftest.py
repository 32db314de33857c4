"""Test-wide setup: 8 fake CPU devices, so multi-device code runs in every test run.

Tests that mean a single device say so with ``parallel="none"``.
"""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One prepared-data directory for the whole session (digits is prepared once)."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))
