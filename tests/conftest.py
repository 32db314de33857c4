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

import struct  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One prepared-data directory for the whole session (digits is prepared once)."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def _read_event_tags(path):
  """Scalar tags in a TensorBoard event file, read with tensorboardX's protobuf classes
  (generated from TensorFlow's event.proto) and its CRC-32C, an independent reader."""
  from tensorboardX.crc32c import crc32c
  from tensorboardX.proto import event_pb2
  masked = lambda b: ((((crc32c(b) >> 15) | (crc32c(b) << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
  tags = set()
  with open(path, "rb") as f:
    data = f.read()
  pos, versions = 0, []
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked(header)
    payload = data[pos + 12:pos + 12 + length]
    assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked(payload)
    event = event_pb2.Event.FromString(payload)
    versions.append(event.file_version)
    tags.update(v.tag for v in event.summary.value)
    pos += 12 + length + 4
  assert versions[0] == "brain.Event:2"
  return tags


@pytest.fixture(scope="session")
def read_event_tags():
  """``path -> set of scalar tags`` of a TensorBoard event file (an independent reader)."""
  return _read_event_tags
