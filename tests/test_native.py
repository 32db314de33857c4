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
  pads = tuple(tuple(p) for p in
               fast_ops._spatial_pads(x.shape[1:3], (ksize, ksize), strides, padding))
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  want = _lax_conv(x, k, padding, strides)
  g = jnp.asarray(rng.standard_normal(want.shape, np.float32))
  want_dk = jax.vjp(lambda b: _lax_conv(x, b, padding, strides), k)[1](g)[0]
  # The kernels' own zero padding, and an input padded beforehand, give the same result.
  for operand, padding_attr in ((x, pads), (xp, native.NO_PADDING)):
    got = native.conv_forward(operand, k, strides, padding_attr)
    np.testing.assert_allclose(got, want, atol=2e-6 * _scale(want), rtol=0)
    got_dk = native.conv_kernel_grad(operand, g, (ksize, ksize), strides, padding_attr)
    np.testing.assert_allclose(got_dk, want_dk, atol=2e-6 * _scale(want_dk), rtol=0)


def _numpy_conv_and_grads(x, k, g, pads, strides):
  """(y, dx, dk) of the zero-padded correlation in float64, tap by tap (brute force)."""
  x, k, g = (np.asarray(a, np.float64) for a in (x, k, g))
  (pt, pb), (pl, pr) = pads
  sh, sw = strides
  xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho, wo = g.shape[1:3]
  y, dxp, dk = np.zeros(g.shape), np.zeros(xp.shape), np.zeros(k.shape)
  for i in range(k.shape[0]):
    for j in range(k.shape[1]):
      window = (slice(None), slice(i, i + (ho - 1) * sh + 1, sh),
                slice(j, j + (wo - 1) * sw + 1, sw))
      y += np.einsum("nhwc,co->nhwo", xp[window], k[i, j])
      dxp[window] += np.einsum("nhwo,co->nhwc", g, k[i, j])
      dk[i, j] = np.einsum("nhwc,nhwo->co", xp[window], g)
  return y, dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2]], dk


# Padding wider than the kernel reach: whole output rows and columns read only zeros.
# (XLA:CPU's own float32 input gradient is wrong here, so the reference is float64.)
@needs_native
@pytest.mark.parametrize("pads,strides", [(((3, 2), (4, 0)), (1, 1)),
                                          (((3, 3), (0, 4)), (2, 2))])
def test_native_convolution_with_padding_past_the_kernel_equals_brute_force(pads, strides):
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal((2, 6, 5, 16), np.float32))
  k = jnp.asarray(rng.standard_normal((3, 3, 16, 32), np.float32))
  assert fast_ops._native_plan(x, k, strides, pads) == (True, True, True)
  y, vjp = jax.vjp(lambda a, b: fast_ops.conv2d(a, b, strides=strides, padding=pads,
                                                implementation="native"), x, k)
  g = jnp.asarray(rng.standard_normal(y.shape, np.float32))
  dx, dk = vjp(g)
  want_y, want_dx, want_dk = _numpy_conv_and_grads(x, k, g, pads, strides)
  for got, want in ((y, want_y), (dx, want_dx), (dk, want_dk)):
    np.testing.assert_allclose(got, want, atol=2e-6 * _scale(want), rtol=0)
  assert not np.any(np.asarray(y)[:, 0])  # the first output row sees only padding


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


# --- BatchNorm kernels. ---------------------------------------------------------------
# Reference: flax.linen.BatchNorm (E[x^2] - E[x]^2 variance, XLA's autodiff), then the
# residual add and ReLU as plain jnp. (8, 12, 12, 16) has 1,152 rows: two chunks of the
# kernels' statistics (1,024 rows of 16 channels each), of unequal size.
BN_SHAPES = [(6, 5, 7, 32), (8, 12, 12, 16), (4, 3, 3, 64)]


def _flax_bn_relu(variables, x, residual, relu):
  import flax.linen as nn
  y, stats = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5).apply(
      variables, x, mutable=["batch_stats"])
  if residual is not None:
    y = y + residual
  return (jax.nn.relu(y) if relu else y), stats


def _bn_case(shape, seed=0):
  rng = np.random.default_rng(seed)
  c = shape[-1]
  x = jnp.asarray(rng.standard_normal(shape, np.float32) * 3 + 1)
  r = jnp.asarray(rng.standard_normal(shape, np.float32))
  w = jnp.asarray(rng.standard_normal(shape, np.float32))
  variables = {"params": {"scale": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32),
                          "bias": jnp.asarray(rng.standard_normal(c), jnp.float32)},
               "batch_stats": {"mean": jnp.full(c, 0.3), "var": jnp.full(c, 2.0)}}
  return x, r, w, variables


@needs_native
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("relu,with_residual", [(False, False), (True, False), (True, True)])
def test_native_batch_norm_equals_flax(shape, relu, with_residual):
  from cnnjax.models import layers
  x, r, w, variables = _bn_case(shape)
  bn = layers.BatchNorm(use_running_average=False, implementation="native")
  assert fast_ops._native_bn_applies(x, variables["params"]["scale"], r, 1, None, jnp.float32)

  def readout(apply):
    def loss(x, params, r):
      y, stats = apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                       r if with_residual else None)
      return jnp.sum(w * jnp.sin(y)), stats
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        x, variables["params"], r)

  ours = readout(lambda v, x, r: bn.apply(v, x, residual=r, relu=relu, mutable=["batch_stats"]))
  ref = readout(lambda v, x, r: _flax_bn_relu(v, x, r, relu))
  (value, stats), grads = ours
  (want_value, want_stats), want_grads = ref
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               stats, want_stats)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, atol=2e-5 * _scale(want), rtol=0)


@needs_native
def test_native_batch_norm_statistics_pass_their_gradients_back():
  # The returned mean and variance are differentiable outputs too (d mean/dx = 1/m,
  # d var/dx = 2 (x - mean)/m); the reference is the plain-jnp formulation.
  x, r, w, variables = _bn_case((4, 5, 5, 16), seed=1)
  scale, bias = variables["params"]["scale"], variables["params"]["bias"]

  def loss(implementation):
    def f(x, scale, bias, r):
      y, mean, var = fast_ops.batch_norm_train(x, scale, bias, residual=r, relu=True,
                                               implementation=implementation)
      return jnp.sum(w * y) + jnp.sum(jnp.cos(mean)) + jnp.sum(var ** 2)
    return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(x, scale, bias, r)

  for got, want in zip(loss("native"), loss("lax")):
    np.testing.assert_allclose(got, want, atol=2e-5 * _scale(want), rtol=0)


@needs_native
def test_native_batch_norm_variance_is_accurate_far_from_zero():
  # Values 1e3 +- 1: E[x^2] - E[x]^2 in float32 would lose every digit; the chunked
  # two-pass merge keeps the variance to float32 rounding of the deviations.
  rng = np.random.default_rng(2)
  x = rng.standard_normal((16, 16, 16, 16)) + 1e3
  mean, var = jax.jit(native.bn_stats)(jnp.asarray(x, jnp.float32))
  x32 = np.asarray(x, np.float32).astype(np.float64)  # what the kernel sees
  np.testing.assert_allclose(mean, x32.mean((0, 1, 2)), rtol=1e-7)
  np.testing.assert_allclose(var, x32.var((0, 1, 2)), rtol=1e-4)


@needs_native
def test_native_batch_norm_is_deterministic_and_vmaps():
  x, r, w, variables = _bn_case((3, 4, 6, 6, 16), seed=4)
  scale, bias = variables["params"]["scale"], variables["params"]["bias"]
  grad = jax.jit(jax.grad(lambda x, s, b, r: jnp.sum(w[0] * fast_ops.batch_norm_train(
      x, s, b, residual=r, relu=True, implementation="native")[0] ** 2), argnums=(0, 1, 2, 3)))
  each = [grad(x[i], scale, bias, r[i]) for i in range(3)]
  again = [grad(x[i], scale, bias, r[i]) for i in range(3)]
  batched = jax.jit(jax.vmap(grad, in_axes=(0, None, None, 0)))(x, scale, bias, r)
  for i in range(3):
    for a, b, c in zip(each[i], again[i], [g[i] for g in batched]):
      np.testing.assert_array_equal(a, b)
      np.testing.assert_array_equal(a, c)


@needs_native
def test_native_batch_norm_takes_only_what_it_can_compute():
  x = jnp.zeros((4, 3, 3, 16))
  s = jnp.ones(16)
  assert fast_ops._native_bn_applies(x, s, None, 1, None, jnp.float32)
  assert not fast_ops._native_bn_applies(jnp.zeros((4, 3, 3, 24)), jnp.ones(24), None, 1, None,
                                         jnp.float32)  # channels not a multiple of 16
  assert not fast_ops._native_bn_applies(x, s, None, 2, None, jnp.float32)  # ghost batches
  assert not fast_ops._native_bn_applies(x, s, None, 1, "batch", jnp.float32)  # synchronized
  assert not fast_ops._native_bn_applies(x.astype(jnp.bfloat16), s, None, 1, None, jnp.float32)
  assert not fast_ops._native_bn_applies(x, s, None, 1, None, jnp.bfloat16)
  assert not fast_ops._native_bn_applies(jnp.zeros((0, 3, 3, 16)), s, None, 1, None, jnp.float32)


@needs_native
def test_fused_resnet_equals_its_unfused_layers_and_lax():
  """Training-mode BatchNorm-add-ReLU as one op gives the values of separate layers."""
  from cnnjax.models import resnet
  model = resnet.CifarResNet(num_classes=10, stage_sizes=(1, 1), widths=(16, 32),
                             implementation="native")
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  fused, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  # Captured intermediates switch the fusion off: separate BatchNorm, add and ReLU layers.
  unfused, state = model.apply(variables, x, train=True, capture_intermediates=True,
                               mutable=["batch_stats", "intermediates"])
  assert "relu2" in state["intermediates"]["stage1_block1"]
  np.testing.assert_allclose(fused, unfused, atol=1e-5 * _scale(unfused), rtol=0)

  def grads(implementation):
    m = model.clone(implementation=implementation)
    def loss(params):
      out, _ = m.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(jnp.sin(out))
    return jax.jit(jax.grad(loss))(variables["params"])
  for got, want in zip(jax.tree.leaves(grads("native")), jax.tree.leaves(grads("lax"))):
    np.testing.assert_allclose(got, want, atol=1e-4 * _scale(want), rtol=0)
