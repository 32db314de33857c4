"""The matmul/reshape formulations in fast_ops equal the plain lax ones.

Reference values come from `lax.conv_general_dilated` and `lax.reduce_window`
(the "lax" implementation), an independent formulation of the same maths; the
tie-breaking case is checked against a hand calculation.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import native
from cnnjax.models import fast_ops

# (kernel size, padding, strides, input side): the cases the models use
# (3x3 valid, 5x5 same, 3x3 same stride 2, 1x1 stride 2 shortcuts, explicit
# PyTorch-style padding) plus odd sizes where SAME pads unevenly.
CONV_CASES = [
    (3, "VALID", (1, 1), 10),
    (5, "SAME", (1, 1), 9),
    (3, "SAME", (2, 2), 8),
    (3, "SAME", (2, 2), 7),
    (1, "VALID", (2, 2), 8),
    (3, ((1, 1), (1, 1)), (1, 1), 6),
    (3, ((0, 2), (1, 0)), (2, 1), 7),
]


def _conv_outputs_fn(conv, x, k, strides, padding):
  f = lambda a, b: jnp.sum(jnp.sin(conv(a, b, strides=strides, padding=padding)))
  return conv(x, k, strides=strides, padding=padding), jax.value_and_grad(f, argnums=(0, 1))(x, k)


def _conv_outputs(conv, x, k, strides, padding):
  """Output, and value and gradients of a non-linear read-out (one compilation).

  A fresh function per call: jit's trace cache does not see the module
  constants (chunk budgets) that the tests patch.
  """
  fresh = jax.jit(lambda *a: _conv_outputs_fn(*a), static_argnums=(0, 3, 4))
  return fresh(conv, x, k, strides, padding)


@pytest.mark.parametrize("chunk_bytes", [fast_ops.PATCH_CHUNK_BYTES, 512],
                         ids=["one_chunk", "many_chunks"])
@pytest.mark.parametrize("ksize,padding,strides,side", CONV_CASES)
def test_conv2d_matmul_equals_lax(monkeypatch, chunk_bytes, ksize, padding, strides, side):
  # A tiny chunk budget forces the chunked path (custom gradient, lax.map).
  monkeypatch.setattr(fast_ops, "PATCH_CHUNK_BYTES", chunk_bytes)
  kx, kk = jax.random.split(jax.random.key(ksize * 100 + side))
  x = jax.random.normal(kx, (4, side, side, 3))
  k = jax.random.normal(kk, (ksize, ksize, 3, 5)) / ksize
  padding = padding if isinstance(padding, str) else tuple(padding)  # hashable for jit
  y_ref, (v_ref, (gx_ref, gk_ref)) = _conv_outputs(fast_ops.conv2d_lax, x, k, strides, padding)
  y, (v, (gx, gk)) = _conv_outputs(fast_ops.conv2d_matmul, x, k, strides, padding)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gk, gk_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("forward", ["xla", "im2col"])
@pytest.mark.parametrize("chunk_bytes", [fast_ops.GRAD_CHUNK_BYTES, 512],
                         ids=["one_chunk", "many_chunks"])
@pytest.mark.parametrize("ksize,padding,strides,side", CONV_CASES)
def test_conv2d_hybrid_equals_lax(monkeypatch, forward, chunk_bytes, ksize, padding, strides,
                                  side):
  # The hand-written input gradient (dilated, padded dy against the flipped
  # kernel) and kernel gradient (transposed forward convolution, chunked when
  # the budget is tiny) against XLA's autodiff of lax.conv_general_dilated.
  for budget in ("GRAD_CHUNK_BYTES", "STRIDED_INPUT_GRAD_CHUNK_BYTES", "KERNEL_GRAD_CHUNK_BYTES"):
    monkeypatch.setattr(fast_ops, budget, chunk_bytes)
  monkeypatch.setattr(fast_ops, "IM2COL_FORWARD_MAX_CIN", 0 if forward == "xla" else 100)
  kx, kk = jax.random.split(jax.random.key(ksize * 100 + side))
  x = jax.random.normal(kx, (4, side, side, 3))
  k = jax.random.normal(kk, (ksize, ksize, 3, 5)) / ksize
  padding = padding if isinstance(padding, str) else tuple(padding)
  y_ref, (v_ref, (gx_ref, gk_ref)) = _conv_outputs(fast_ops.conv2d_lax, x, k, strides, padding)
  y, (v, (gx, gk)) = _conv_outputs(fast_ops.conv2d_hybrid, x, k, strides, padding)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gk, gk_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cin", [1, 6], ids=["taps_leading", "taps_concatenated"])
@pytest.mark.parametrize("ksize,padding,strides,side", CONV_CASES)
def test_conv2d_hybrid_im2col_layouts_equal_lax(cin, ksize, padding, strides, side):
  # im2col stacks its taps on a leading axis for Cin <= TAPS_LEADING_MAX_CIN
  # and concatenates them along the channels above; the tests above use Cin = 3.
  assert 1 <= fast_ops.TAPS_LEADING_MAX_CIN < 6 < fast_ops.IM2COL_FORWARD_MAX_CIN
  kx, kk = jax.random.split(jax.random.key(ksize * 100 + side + cin))
  x = jax.random.normal(kx, (4, side, side, cin))
  k = jax.random.normal(kk, (ksize, ksize, cin, 5)) / ksize
  padding = padding if isinstance(padding, str) else tuple(padding)
  y_ref, (v_ref, (gx_ref, gk_ref)) = _conv_outputs(fast_ops.conv2d_lax, x, k, strides, padding)
  y, (v, (gx, gk)) = _conv_outputs(fast_ops.conv2d_hybrid, x, k, strides, padding)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gk, gk_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cin,ksize,padding,strides,side,pool_padding", [
    (1, 5, "SAME", (1, 1), 28, "SAME"),     # mnist_cnn conv1
    (3, 3, "VALID", (1, 1), 32, "VALID"),   # keras_cifar_cnn conv1 (30x30 -> 15x15)
    (8, 3, "VALID", (1, 1), 9, "SAME"),     # odd map: SAME pooling pads one row and column
    (4, 3, ((1, 1), (1, 1)), (2, 2), 9, "VALID"),  # strided conv, odd map cropped by VALID
])
def test_conv_relu_max_pool_equals_separate_lax_ops(cin, ksize, padding, strides, side,
                                                    pool_padding):
  kx, kk, kb = jax.random.split(jax.random.key(cin * 100 + side), 3)
  # Rounded inputs make exact ties in the pooling and exact zeros before the
  # ReLU, where the gradient rules (first maximum; 0 at 0) matter.
  x = jnp.round(jax.random.normal(kx, (4, side, side, cin)) * 2) / 2
  k = jnp.round(jax.random.normal(kk, (ksize, ksize, cin, 6)) * 2) / 2
  b = jnp.round(jax.random.normal(kb, (6,)))
  def separate(x, k, b):
    y = jax.nn.relu(fast_ops.conv2d_lax(x, k, strides=strides, padding=padding) + b)
    return fast_ops.max_pool_lax(y, (2, 2), padding=pool_padding)
  def fused(x, k, b):
    return fast_ops.conv_relu_max_pool(x, k, b, strides=strides, padding=padding,
                                       window=(2, 2), pool_padding=pool_padding,
                                       implementation="hybrid")
  readout = lambda f: jax.jit(jax.value_and_grad(
      lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=(0, 1, 2)))(x, k, b)
  (v_ref, g_ref), (v, g) = readout(separate), readout(fused)
  assert fused(x, k, b).shape == separate(x, k, b).shape
  np.testing.assert_allclose(fused(x, k, b), separate(x, k, b), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5)
  for got, want, name in zip(g, g_ref, ("dx", "dkernel", "dbias")):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=name)


def test_models_fuse_only_in_training_and_keep_layers_for_inspection():
  # Same parameters either way; evaluation and intermediate capture keep the
  # separate ReLU and pooling modules.
  from cnnjax import models
  model = models.get_model("keras_cifar_cnn", num_classes=10, implementation="hybrid")
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  jaxpr = lambda train: str(jax.make_jaxpr(
      lambda v: model.apply(v, x, train=train))(variables))
  assert "name=_fused_crp" in jaxpr(True) and "name=_fused_crp" not in jaxpr(False)
  _, captured = model.apply(variables, x, train=True, capture_intermediates=True)
  assert {"relu1", "pool1", "relu2", "pool2"} <= set(captured["intermediates"])
  np.testing.assert_allclose(model.apply(variables, x, train=True),
                             model.apply(variables, x, train=False), rtol=1e-6, atol=1e-6)


def test_conv2d_hybrid_strides_leaving_rows_unread():
  # Stride 3 over 11 rows with a 5-tap kernel: (11 + 2 + 0 - 5) mod 3 = 2 input
  # rows are read by no window, so their gradient must be exactly zero.
  x = jax.random.normal(jax.random.key(0), (2, 11, 11, 2))
  k = jax.random.normal(jax.random.key(1), (5, 5, 2, 3))
  pads = ((2, 0), (0, 3))
  f = lambda conv: jax.value_and_grad(
      lambda a, b: jnp.sum(jnp.sin(conv(a, b, strides=(3, 2), padding=pads))), argnums=(0, 1))
  (v, (gx, gk)), (v_ref, (gx_ref, gk_ref)) = f(fast_ops.conv2d_hybrid)(x, k), f(
      fast_ops.conv2d_lax)(x, k)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gk, gk_ref, rtol=1e-5, atol=1e-4)
  assert float(jnp.abs(gx[:, -2:]).max()) == 0.0


def test_gradient_chunk_budgets(monkeypatch):
  # Kernel gradient: its own budget on x + dy per example. Strided input gradient:
  # the dilated, padded dy (3x3 kernel, stride 2, 8x8 -> 4x4, 5 channels: 11*11*5)
  # plus dx (8*8*3) per example, float32.
  monkeypatch.setattr(fast_ops, "STRIDED_INPUT_GRAD_CHUNK_BYTES", 4 * (605 + 192) * 2)
  assert fast_ops._input_grad_chunks((8, 8, 8, 3), (8, 4, 4, 5), (3, 3, 3, 5), (2, 2), 4) == 4
  monkeypatch.setattr(fast_ops, "GRAD_CHUNK_BYTES", 4 * (192 + 80) * 4)
  assert fast_ops._input_grad_chunks((8, 8, 8, 3), (8, 4, 4, 5), (3, 3, 3, 5), (1, 1), 4) == 2
  assert fast_ops._grad_chunks(8, 100, budget=400) == 2


def test_conv2d_chunks_divide_batch(monkeypatch):
  monkeypatch.setattr(fast_ops, "PATCH_CHUNK_BYTES", 1000)
  assert fast_ops._num_chunks(12, 300) == 4   # 3 examples * 300 B fit, 4 do not
  assert fast_ops._num_chunks(7, 300) == 7    # prime batch: one example per chunk
  assert fast_ops._num_chunks(8, 100) == 1


def test_conv2d_keeps_bfloat16():
  x = jnp.ones((2, 6, 6, 3), jnp.bfloat16)
  k = jnp.ones((3, 3, 3, 4), jnp.bfloat16)
  y = fast_ops.conv2d_matmul(x, k, padding="SAME")
  assert y.dtype == jnp.bfloat16
  # Interior output = 3*3*3 ones = 27 (exact in bfloat16).
  assert float(y[0, 2, 2, 0]) == 27.0
  gk = jax.grad(lambda b: jnp.sum(fast_ops.conv2d_matmul(x, b, padding="SAME")))(k)
  assert gk.dtype == jnp.bfloat16


# (window, strides, padding, side)
POOL_CASES = [
    ((2, 2), None, "VALID", 8),
    ((2, 2), None, "VALID", 7),
    ((2, 2), None, "SAME", 7),
    ((2, 2), None, "SAME", 14),
    ((3, 3), None, "SAME", 7),          # SAME pads (1, 1): the low side is padded too
    ((2, 2), None, ((1, 1), (1, 0)), 6),
    ((3, 3), (2, 2), "SAME", 8),        # overlapping: falls back to lax
    ((1, 1), (2, 2), "VALID", 7),       # option-A shortcut subsample: a strided slice
    ((1, 1), (2, 2), "SAME", 8),
]


@pytest.mark.parametrize("window,strides,padding,side", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_equals_lax(kind, window, strides, padding, side):
  # Continuous random inputs: no ties, so max-pool gradients agree exactly.
  x = jax.random.normal(jax.random.key(side), (3, side, side, 4))
  fast = {"max": fast_ops.max_pool, "avg": fast_ops.avg_pool}[kind]
  ref = {"max": fast_ops.max_pool_lax, "avg": fast_ops.avg_pool_lax}[kind]
  padding = padding if isinstance(padding, str) else tuple(padding)
  w = jax.random.normal(jax.random.key(1), ref(x, window, strides, padding).shape)

  fast = functools.partial(fast, implementation="matmul")

  @jax.jit
  def outputs(a):
    fast_out = jax.value_and_grad(lambda a: jnp.sum(w * fast(a, window, strides, padding)))(a)
    y = fast(a, window, strides, padding)
    y_ref = ref(a, window, strides, padding)
    g_ref = jax.grad(lambda a: jnp.sum(w * ref(a, window, strides, padding)))(a)
    return y, fast_out[1], y_ref, g_ref

  y, g, y_ref, g_ref = outputs(x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)


def test_max_pool_ties_route_the_gradient_like_lax():
  # Windows with tied maxima. By hand: the whole gradient of a window goes to
  # its first maximal entry in row-major order (lax's select-and-scatter).
  x = jnp.array([[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 2.0, 2.0]]).reshape(1, 2, 4, 1)
  g = jax.grad(lambda a: jnp.sum(fast_ops.max_pool(a, implementation="hybrid")))(x)
  g_ref = jax.grad(lambda a: jnp.sum(fast_ops.max_pool_lax(a)))(x)
  expected = [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
  np.testing.assert_array_equal(g[0, :, :, 0], expected)
  np.testing.assert_array_equal(g_ref[0, :, :, 0], expected)


def test_max_pool_keeps_bfloat16():
  x = jnp.arange(2 * 5 * 5 * 1, dtype=jnp.bfloat16).reshape(2, 5, 5, 1)
  y = fast_ops.max_pool(x, (2, 2), None, "SAME", implementation="matmul")
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y, fast_ops.max_pool_lax(x, (2, 2), None, "SAME"))


def test_implementation_dispatch():
  cpu_default = "native" if native.available() else "hybrid"
  assert fast_ops.resolve("auto") == (cpu_default if jax.default_backend() == "cpu" else "lax")
  assert fast_ops.resolve("auto", forward_only=True) == "lax"
  assert fast_ops.resolve("matmul", forward_only=True) == "matmul"
  with pytest.raises(ValueError, match="'im2col'"):
    fast_ops.resolve("im2col")
  # The choice is an argument: two formulations in one program, no module state.
  x = jnp.ones((1, 4, 4, 1))
  k = jnp.ones((2, 2, 1, 1))
  both = jax.make_jaxpr(lambda x: (fast_ops.conv2d(x, k, implementation="hybrid"),
                                   fast_ops.conv2d(x, k, implementation="lax")))(x)
  assert "_hybrid_conv" in str(both) and "conv_general_dilated" in str(both)


def _train_losses(model_name, input_shape, implementation, steps=5, microbatches=1):
  """Losses of `steps` library train steps under one fast_ops implementation."""
  from cnnjax import config as config_lib
  from cnnjax import models, optimizers, tasks
  from cnnjax.data import catalog
  from cnnjax.training import state as state_lib
  from cnnjax.training import steps as steps_lib

  config = config_lib.get_config()
  task = tasks.get_task("classification", catalog.dataset_info("mnist"))
  model = models.get_model(model_name, num_classes=10, implementation=implementation)
  tx = optimizers.make_optimizer(config.optimizer, steps)
  state = state_lib.create_train_state(jax.random.key(0), model, tx, input_shape)
  step = jax.jit(functools.partial(steps_lib.train_step, task=task,
                                   loss_fn=task.make_loss(config.loss), microbatches=microbatches))
  rng = np.random.default_rng(0)
  out = []
  for _ in range(steps):
    batch = {"image": jnp.asarray(rng.random((16, *input_shape), np.float32)),
             "label": jnp.asarray(rng.integers(0, 10, 16))}
    state, metrics = step(state, batch, jax.random.key(1))
    out.append(float(metrics["loss"]))
  return np.array(out)


@pytest.mark.parametrize("model_name,input_shape,microbatches,steps", [
    ("keras_cifar_cnn", (32, 32, 3), 2, 5),
    # mnist_cnn has dropout, whose masks are drawn per micro-batch: a split
    # changes the trajectory whatever the formulation, so compare whole batches.
    ("mnist_cnn", (28, 28, 1), 1, 5),
    # BatchNorm with the hybrid convolutions (chunked gradients), and the
    # residual network's strided convolutions and option-A subsample shortcuts.
    # resnet20's batch statistics over 16 examples amplify rounding differences:
    # its losses agree to 2e-5 for 4 steps and drift apart by 1.5e-4 at the 5th.
    # Both in the full tier (three compilations each; the quick tier's time is spent).
    pytest.param("bn_cnn", (8, 8, 1), 1, 5, marks=pytest.mark.slow),
    pytest.param("resnet20", (8, 8, 3), 1, 4, marks=pytest.mark.slow),
])
def test_training_trajectory_matches_lax(model_name, input_shape, microbatches, steps):
  plain = _train_losses(model_name, input_shape, "lax", steps=steps)
  # The default formulation ("auto" = "hybrid" on CPU) and "matmul".
  for implementation, mb in (("auto", microbatches), ("matmul", 1)):
    fast = _train_losses(model_name, input_shape, implementation, steps=steps, microbatches=mb)
    assert np.all(np.isfinite(fast))
    np.testing.assert_allclose(fast, plain, rtol=1e-4, err_msg=implementation)
