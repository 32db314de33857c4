"""The native CPU convolution kernels (cnnjax.native) equal plain lax.

Reference values come from `lax.conv_general_dilated` at HIGHEST precision and its
automatic gradients, an independent formulation of the same sums; the training
trajectory is compared with the "lax" formulation over a few steps. Skipped, with
the reason, where the kernels cannot be built (no AVX-512 or no C++ compiler).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnjax import native
from cnnjax.native import build
from cnnjax.models import fast_ops

needs_native = pytest.mark.skipif(not native.available(),
                                  reason=f"native kernels: {native.unavailable_reason()}")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lax_conv(x, k, padding, strides=(1, 1)):
  return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=lax.Precision.HIGHEST)


def _scale(a):
  return float(np.max(np.abs(np.asarray(a))))


# (batch, side, Cin, Cout, kernel, padding, strides): the CIFAR ResNet and VGG widths,
# the 3-channel stem, a Cout that needs 2 + 1 vectors (48), rows whose width is no
# multiple of any pixel block (7, 9), a 5x5 kernel, uneven explicit padding, and the
# ResNets' stride-2 convolutions on even and odd sides (rows no window reaches).
CASES = [
    (2, 8, 3, 16, 3, "SAME", (1, 1)),
    (3, 9, 16, 16, 3, "SAME", (1, 1)),
    (2, 7, 32, 32, 3, "SAME", (1, 1)),
    (2, 6, 16, 48, 3, "VALID", (1, 1)),
    (1, 8, 64, 64, 3, "SAME", (1, 1)),
    (2, 7, 16, 16, 5, ((2, 1), (0, 3)), (1, 1)),
    (2, 8, 16, 32, 3, "SAME", (2, 2)),
    (2, 9, 32, 64, 3, "SAME", (2, 2)),
    (1, 8, 16, 16, 3, ((1, 0), (0, 1)), (2, 1)),
    (1, 5, 5, 80, 3, ((0, 0), (1, 1)), (1, 1)),
]


@needs_native
@pytest.mark.parametrize("n,side,cin,cout,ksize,padding,strides", CASES)
def test_kernels_equal_lax(n, side, cin, cout, ksize, padding, strides):
  rng = np.random.default_rng(cin * 100 + cout)
  x = jnp.asarray(rng.standard_normal((n, side, side, cin), np.float32))
  k = jnp.asarray(rng.standard_normal((ksize, ksize, cin, cout), np.float32))
  pads = fast_ops._spatial_pads(x.shape[1:3], (ksize, ksize), strides, padding)
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  want = _lax_conv(x, k, padding, strides)
  got = native.conv_forward(xp, k, strides)
  np.testing.assert_allclose(got, want, atol=2e-6 * _scale(want), rtol=0)
  g = jnp.asarray(rng.standard_normal(want.shape, np.float32))
  want_dk = jax.vjp(lambda b: _lax_conv(x, b, padding, strides), k)[1](g)[0]
  xp = fast_ops._crop_to_windows(xp, k.shape, strides)
  got_dk = native.conv_kernel_grad(xp, g, (ksize, ksize), strides)
  np.testing.assert_allclose(got_dk, want_dk, atol=2e-6 * _scale(want_dk), rtol=0)


# The last case's 80 output channels are past NATIVE_MAX_CHANNELS (hybrid throughout).
@needs_native
@pytest.mark.parametrize("n,side,cin,cout,ksize,padding,strides", CASES[:-1])
def test_conv2d_native_values_and_gradients_equal_lax(n, side, cin, cout, ksize, padding, strides):
  rng = np.random.default_rng(cin + cout)
  x = jnp.asarray(rng.standard_normal((n, side, side, cin), np.float32))
  k = jnp.asarray(rng.standard_normal((ksize, ksize, cin, cout), np.float32) / ksize)
  readout = lambda conv: jax.jit(jax.value_and_grad(
      lambda a, b: jnp.sum(jnp.sin(conv(a, b))), argnums=(0, 1)))(x, k)
  (v0, (dx0, dk0)) = readout(lambda a, b: _lax_conv(a, b, padding, strides))
  (v1, (dx1, dk1)) = readout(lambda a, b: fast_ops.conv2d(a, b, padding=padding, strides=strides,
                                                          implementation="native"))
  assert any(fast_ops._native_plan(x, k, strides))
  np.testing.assert_allclose(v1, v0, rtol=1e-4)
  for got, want in ((dx1, dx0), (dk1, dk0)):
    np.testing.assert_allclose(got, want, atol=1e-5 * _scale(want), rtol=0)


@needs_native
def test_plan_keeps_the_hybrid_formulation_where_native_loses_or_cannot_run():
  x = jnp.zeros((2, 8, 8, 16))
  assert fast_ops._native_plan(x, jnp.zeros((3, 3, 16, 16)), (1, 1)) == (True, True, True)
  assert fast_ops._native_plan(x, jnp.zeros((3, 3, 16, 128)), (1, 1)) == (False, False, False)
  assert fast_ops._native_plan(x, jnp.zeros((3, 3, 16, 16)), (2, 2)) == (True, True, True)
  assert fast_ops._native_plan(x, jnp.zeros((3, 3, 16, 8)), (1, 1)) == (False, True, False)
  assert fast_ops._native_plan(x[..., :3], jnp.zeros((3, 3, 3, 16)), (1, 1)) == (
      True, False, False)
  xb = x.astype(jnp.bfloat16)
  assert fast_ops._native_plan(xb, jnp.zeros((3, 3, 16, 16), jnp.bfloat16), (1, 1)) == (
      False, False, False)
  # bfloat16 convolutions still run, on the hybrid formulation.
  y = fast_ops.conv2d(xb, jnp.ones((3, 3, 16, 16), jnp.bfloat16), implementation="native")
  assert y.dtype == jnp.bfloat16
  assert fast_ops.conv2d(x, jnp.ones((3, 3, 16, 16)), strides=(2, 2),
                         implementation="native").shape == (2, 4, 4, 16)


@needs_native
def test_results_are_deterministic_and_vmap_runs_each_member_alone():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((3, 2, 8, 8, 16), np.float32))
  k = jnp.asarray(rng.standard_normal((3, 3, 3, 16, 16), np.float32))
  grad = jax.jit(jax.grad(lambda a, b: jnp.sum(fast_ops.conv2d(a, b, implementation="native")
                                               ** 2), argnums=(0, 1)))
  each = [grad(x[r], k[r]) for r in range(3)]
  again = [grad(x[r], k[r]) for r in range(3)]
  batched = jax.jit(jax.vmap(grad))(x, k)
  for r in range(3):
    for a, b, c in zip(each[r], again[r], (batched[0][r], batched[1][r])):
      np.testing.assert_array_equal(a, b)
      np.testing.assert_array_equal(a, c)


def test_missing_compiler_is_named(monkeypatch):
  monkeypatch.setenv("CXX", "no-such-compiler-cnnjax")
  with pytest.raises(build.NativeUnavailable, match="no-such-compiler-cnnjax"):
    build._compiler()


def test_switched_off_falls_back_to_hybrid_and_says_why():
  code = ("import jax; from cnnjax.models import fast_ops; from cnnjax.training import manifest; "
          "print(fast_ops.resolve('auto'), manifest.fast_ops_formulation())")
  env = {**os.environ, "CNNJAX_NATIVE": "0", "PYTHONPATH": REPO}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout
  assert out.split()[0] == "hybrid"
  assert "'native_unavailable': 'CNNJAX_NATIVE=0'" in out


@needs_native
def test_no_window_fits_falls_back_like_lax():
  # A 3x3 VALID kernel on 1-row inputs: lax returns an empty map, so must "native".
  x = jnp.ones((1, 1, 6, 16))
  k = jnp.ones((3, 3, 16, 16))
  assert fast_ops._native_plan(x, k, (1, 1), ((0, 0), (0, 0))) == (False, False, False)
  y = fast_ops.conv2d(x, k, padding="VALID", implementation="native")
  assert y.shape == _lax_conv(x, k, "VALID").shape == (1, 0, 4, 16)


@needs_native
def test_batch_sharded_runs_train_with_the_hybrid_formulation():
  """The FFI calls have no partitioning rule, so a sharded run keeps the XLA formulation."""
  from cnnjax import config as config_lib
  from cnnjax import parallel
  from cnnjax.data import catalog, pipeline
  from cnnjax.training import build
  info = catalog.DatasetInfo("cifar10", (8, 8, 3), 10)
  rng = np.random.default_rng(0)
  arrays = (rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 16))
  data = pipeline.Dataset(info, arrays, arrays, batch_size=8, eval_batch_size=8)
  config = config_lib.get_config()
  config.dataset, config.validation_fraction = "cifar10", 0.0
  single = build.build_run(config, data=data)
  assert single.model.implementation == "native"
  assert jax.device_count() > 1  # tests/conftest.py: 8 CPU devices
  sharded = build.build_run(config, data=data, parallel=parallel.Parallel("sharded"))
  assert sharded.model.implementation == "hybrid"
