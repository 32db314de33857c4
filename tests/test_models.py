"""Tests of cnnjax.models: parameter counts, shapes, training, precision, BatchNorm."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.models import fast_ops, layers

SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]


# --- Independent parameter counts, written out from the layer formulas. ------------
def conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def dense(n_in, n_out):
  return n_in * n_out + n_out


def bn(c):
  return 2 * c  # scale and bias; running mean/var are batch_stats, not params


def ceil2(n):
  return -(-n // 2)


def count_simple_cnn(h, w, c):
  return (conv(3, c, 16) + conv(3, 16, 32)
          + dense((h // 2 // 2) * (w // 2 // 2) * 32, 256) + dense(256, 10))


def count_keras_cifar_cnn(h, w, c):
  def side(n):
    return ((n - 2) // 2 - 2) // 2 - 2
  return (conv(3, c, 32) + conv(3, 32, 64) + conv(3, 64, 64)
          + dense(side(h) * side(w) * 64, 64) + dense(64, 10))


def count_mnist_cnn(h, w, c):
  return (conv(5, c, 32) + conv(5, 32, 64)
          + dense(ceil2(ceil2(h)) * ceil2(ceil2(w)) * 64, 1024) + dense(1024, 10))


def count_lenet5(h, w, c):
  def side(n):
    return (n // 2 - 4) // 2
  return (conv(5, c, 6) + conv(5, 6, 16) + dense(side(h) * side(w) * 16, 120)
          + dense(120, 84) + dense(84, 10))


def count_bn_cnn(h, w, c):
  return (conv(3, c, 32, False) + bn(32) + conv(3, 32, 32, False) + bn(32)
          + conv(3, 32, 64, False) + bn(64) + conv(3, 64, 64, False) + bn(64)
          + dense((h // 4) * (w // 4) * 64, 10))


def count_tiny_cnn(h, w, c):
  return conv(3, c, 4, False) + bn(4) + conv(3, 4, 8, False) + bn(8) + dense((h // 4) * (w // 4) * 8, 10)


def count_vgg_small(h, w, c):
  return (conv(3, c, 64, False) + bn(64) + conv(3, 64, 64, False) + bn(64)
          + conv(3, 64, 128, False) + bn(128) + conv(3, 128, 128, False) + bn(128)
          + conv(3, 128, 256, False) + bn(256) + conv(3, 256, 256, False) + bn(256)
          + dense(256, 10))


def count_resnet20(h, w, c):
  stem = conv(3, c, 16, False) + bn(16)
  stage1 = 6 * (conv(3, 16, 16, False) + bn(16))
  stage2 = conv(3, 16, 32, False) + bn(32) + 5 * (conv(3, 32, 32, False) + bn(32))
  stage3 = conv(3, 32, 64, False) + bn(64) + 5 * (conv(3, 64, 64, False) + bn(64))
  return stem + stage1 + stage2 + stage3 + dense(64, 10)  # option A: no shortcut params


def count_resnet18(h, w, c):
  total = conv(3, c, 64, False) + bn(64) + 4 * (conv(3, 64, 64, False) + bn(64))
  for cin, cout in [(64, 128), (128, 256), (256, 512)]:
    total += conv(3, cin, cout, False) + bn(cout)            # first conv, stride 2
    total += 3 * (conv(3, cout, cout, False) + bn(cout))     # the other three
    total += conv(1, cin, cout, False) + bn(cout)            # option-B projection
  return total + dense(512, 10)


def conv_bn(cin, cout):
  return conv(3, cin, cout, False) + bn(cout)


def count_unet(widths):
  def count(h, w, c):
    total, cin = 0, c
    for width in widths:                      # encoder levels and the bottom: two units each
      total += conv_bn(cin, width) + conv_bn(width, width)
      cin = width
    for level in range(len(widths) - 2, -1, -1):  # decoder: concat(skip, upsampled), two units
      total += conv_bn(widths[level] + cin, widths[level]) + conv_bn(widths[level], widths[level])
      cin = widths[level]
    return total + conv(1, widths[0], 10)     # 1x1 head, with bias
  return count


def count_fcn(h, w, c):
  backbone = (conv_bn(c, 16) + conv_bn(16, 16) + conv_bn(16, 32) + conv_bn(32, 32)
              + conv_bn(32, 64) + conv_bn(64, 64))
  # A 1x1 score conv on each stage's output (16, 32, 64 channels) and after the last pool.
  return backbone + conv(1, 16, 10) + conv(1, 32, 10) + 2 * conv(1, 64, 10)


def count_loc_cnn(h, w, c):
  """Convs 16, 32, 64; a box head on the flattened map (hidden 128, 4 outputs) and a class
  head on its maximum over positions (64 features, hidden 128, the other 6 outputs)."""
  convs = conv_bn(c, 16) + conv_bn(16, 32) + conv_bn(32, 64)
  flat = (h // 8) * (w // 8) * 64
  return convs + dense(flat, 128) + dense(128, 4) + dense(64, 128) + dense(128, 6)


def count_seq_reader(h, w, c):
  """Convs 32, 64, 128, a conv across columns, the start unit, a head shared by the 3
  positions reading 4 columns of 128 features and the mass, 11 symbols (33 outputs)."""
  convs = conv_bn(c, 32) + conv_bn(32, 64) + conv_bn(64, 128) + conv_bn(128, 128)
  return convs + dense(128, 1) + dense(4 * 128 + 1, 128) + dense(128, 11)


COUNTS = {
    "simple_cnn": count_simple_cnn,
    "keras_cifar_cnn": count_keras_cifar_cnn,
    "mnist_cnn": count_mnist_cnn,
    "lenet5": count_lenet5,
    "bn_cnn": count_bn_cnn,
    "tiny_cnn": count_tiny_cnn,
    "embedding_cnn": count_bn_cnn,  # bn_cnn's layers; the last Dense is the embedding
    "vgg_small": count_vgg_small,
    "resnet20": count_resnet20,
    "resnet18": count_resnet18,
    "unet_small": count_unet((16, 32, 64)),
    "tiny_unet": count_unet((4, 8)),
    "fcn": count_fcn,
    "loc_cnn": count_loc_cnn,
    "seq_reader": count_seq_reader,
}

# Smallest accepted side, derived in each model's docstring; None = any size.
MIN_SIDE = {"simple_cnn": 4, "keras_cifar_cnn": 18, "mnist_cnn": None, "lenet5": 12,
            "bn_cnn": 4, "tiny_cnn": 4, "vgg_small": 8, "resnet20": None, "resnet18": None,
            "embedding_cnn": 4, "loc_cnn": 8, "seq_reader": None, "unet_small": None,
            "tiny_unet": None, "fcn": None}
# Models whose sides must divide by this (2x pools with 2x upsampling, or no padding).
DIVISOR = {"unet_small": 4, "tiny_unet": 2, "fcn": 8, "seq_reader": 4}
# Output width where 10 does not fit (seq_reader: 3 positions x 11 symbols).
OUTPUTS = {"seq_reader": 33}
# Models with an output per pixel.
PER_PIXEL = ("fcn", "tiny_unet", "unet_small")


def supported(name, shape):
  return ((MIN_SIDE[name] is None or shape[0] >= MIN_SIDE[name])
          and shape[0] % DIVISOR.get(name, 1) == 0)


def abstract_init(model, shape, batch=2):
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((batch, *shape)), train=False))


@functools.lru_cache(maxsize=None)
def real_init(name, shape):
  """Initialized variables of model ``name`` (default fields) for [H, W, C] = shape.

  Cached and jitted: one compiled program per model and shape, shared by tests.
  """
  model = models.get_model(name, num_classes=OUTPUTS.get(name, 10))
  return jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(
      jnp.zeros((1, *shape)))


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_every_model_has_a_reference_count():
  assert set(COUNTS) == set(models.MODELS)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_parameter_counts(name):
  for shape in SHAPES:
    model = models.get_model(name, num_classes=OUTPUTS.get(name, 10))
    if not supported(name, shape):
      match = (f"divisible by {DIVISOR[name]}" if name in DIVISOR
               else f"at least {MIN_SIDE[name]}x{MIN_SIDE[name]}")
      with pytest.raises(ValueError, match=match):
        abstract_init(model, shape)
      continue
    assert n_params(abstract_init(model, shape)["params"]) == COUNTS[name](*shape), shape


def test_published_counts():
  # keras_cifar_cnn: 122,570 in the TensorFlow CNN tutorial's model.summary().
  # resnet18 (CIFAR stem, option B): 11,173,962, the count usually reported for
  # the popular PyTorch CIFAR ResNet-18. lenet5 on 28x28x1: 61,706, the classic
  # LeNet-5 count. mnist_cnn on 28x28x1: 3,274,634 (Keras summary of that model).
  for name, shape, expected in [("keras_cifar_cnn", (32, 32, 3), 122_570),
                                ("resnet18", (32, 32, 3), 11_173_962),
                                ("lenet5", (28, 28, 1), 61_706),
                                ("mnist_cnn", (28, 28, 1), 3_274_634)]:
    model = models.get_model(name, num_classes=10)
    assert n_params(abstract_init(model, shape)["params"]) == expected, name


@pytest.mark.parametrize("name", ["simple_cnn", "keras_cifar_cnn", "lenet5", "bn_cnn",
                                  "vgg_small"])
def test_minimum_input_size_is_exact(name):
  m = MIN_SIDE[name]
  model = models.get_model(name, num_classes=3)
  out = jax.eval_shape(functools.partial(model.apply, train=False),
                       abstract_init(model, (m, m, 1)), jnp.zeros((1, m, m, 1)))
  assert out.shape == (1, 3)
  with pytest.raises(ValueError, match=f"got {m - 1}x{m}"):
    abstract_init(model, (m - 1, m, 1))


def test_rank_must_be_four():
  model = models.get_model("resnet20", num_classes=10)
  with pytest.raises(ValueError, match=r"\[batch, height, width, channels\]"):
    model.init(jax.random.key(0), jnp.zeros((8, 8, 1)), train=False)


def test_get_model_errors_and_bn_options():
  with pytest.raises(ValueError, match="'nope'.*bn_cnn.*resnet20"):
    models.get_model("nope", num_classes=10)
  with pytest.raises(TypeError, match="widht"):
    models.get_model("bn_cnn", num_classes=10, widht=3)
  with pytest.raises(ValueError, match="num_classes"):
    models.get_model("bn_cnn", num_classes=0)
  # BatchNorm options are accepted, and dropped, for models without BatchNorm.
  m = models.get_model("simple_cnn", num_classes=10, bn_axis_name="batch", bn_ghost_batches=2)
  assert isinstance(m, models.SimpleCNN)
  assert models.get_model("bn_cnn", num_classes=10, bn_ghost_batches=2).bn_ghost_batches == 2
  assert models.has_batch_norm("resnet18") and not models.has_batch_norm("mnist_cnn")
  assert models.get_model("resnet20", num_classes=10).shortcut == "A"
  with pytest.raises(ValueError, match="dropout_rate"):
    abstract_init(models.get_model("bn_cnn", num_classes=10, dropout_rate=1.5), (8, 8, 1))


# --- Training. ------------------------------------------------------------------
def _train_losses(name, shape, steps, lr, batch=4):
  """Plain SGD on one fixed batch; returns the loss before each step."""
  model = models.get_model(name, num_classes=OUTPUTS.get(name, 10))
  kx, ky = jax.random.split(jax.random.key(1))
  x = jax.random.uniform(kx, (batch, *shape))
  y = jax.random.randint(ky, (batch, *shape[:2]) if name in PER_PIXEL else (batch,), 0, 10)
  variables = real_init(name, shape)
  params, stats = variables["params"], variables.get("batch_stats", {})
  dropout_key = jax.random.key(2)  # fixed mask: the loss is a function of params only

  @jax.jit
  def step(params, stats):
    def loss_fn(p):
      logits, new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                mutable=["batch_stats"], rngs={"dropout": dropout_key})
      logp = jax.nn.log_softmax(logits)
      return -jnp.take_along_axis(logp, y[..., None], axis=-1).mean(), new
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return params, new.get("batch_stats", {}), loss

  losses = []
  for _ in range(steps):
    params, stats, loss = step(params, stats)
    losses.append(float(loss))
  return losses


# One input shape per model: its own dataset's (the source's 32x32x3 for the CIFAR
# models, 28x28x1 for the MNIST ones, the digits' 8x8x1 for the rest). What depends on the
# shape (parameter counts, minimum sizes, output shapes) is checked at every shape above
# with abstract evaluation; compiling a training step per shape would add minutes.
TRAIN_SHAPE = {"simple_cnn": (32, 32, 3), "keras_cifar_cnn": (32, 32, 3),
               "mnist_cnn": (28, 28, 1), "lenet5": (28, 28, 1), "bn_cnn": (8, 8, 1),
               "tiny_cnn": (8, 8, 1), "vgg_small": (8, 8, 1), "resnet20": (8, 8, 1),
               "resnet18": (8, 8, 1), "embedding_cnn": (8, 8, 1), "fcn": (8, 8, 1),
               "loc_cnn": (8, 8, 1), "seq_reader": (8, 8, 1), "tiny_unet": (8, 8, 1),
               "unet_small": (8, 8, 1)}
TRAIN_CASES = [
    pytest.param(name, TRAIN_SHAPE[name],
                 marks=[pytest.mark.slow] if name in ("resnet18", "vgg_small") else [])
    for name in sorted(models.MODELS)]


def test_every_model_has_a_training_shape():
  assert set(TRAIN_SHAPE) == set(models.MODELS)
  assert all(supported(name, shape) for name, shape in TRAIN_SHAPE.items())


@pytest.mark.parametrize("name,shape", TRAIN_CASES)
def test_trains_on_fixed_batch(name, shape):
  steps = 2 if name == "resnet18" else 3
  losses = _train_losses(name, shape, steps, lr=1e-3)
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", ["mnist_cnn", "bn_cnn", "resnet20"])
def test_eval_mode_is_deterministic_and_pure(name):
  model = models.get_model(name, num_classes=10, dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  variables = real_init(name, (8, 8, 1))  # dropout_rate does not change the variables
  # No 'dropout' rng and no mutable collections: flax raises if either is needed.
  evaluate = jax.jit(lambda v: model.apply(v, x, train=False))
  a, b = evaluate(variables), evaluate(variables)
  np.testing.assert_array_equal(a, b)
  # Dropout really acts in training mode (two masks differ).
  mutable = ["batch_stats"] if models.has_batch_norm(name) else False
  train = jax.jit(lambda v, key: model.apply(v, x, train=True, rngs={"dropout": key},
                                             mutable=mutable))
  t1, t2 = train(variables, jax.random.key(3)), train(variables, jax.random.key(4))
  if mutable:
    t1, t2 = t1[0], t2[0]
  assert not np.allclose(t1, t2)


def test_mnist_cnn_default_dropout_is_half():
  model = models.get_model("mnist_cnn", num_classes=10)
  x = jnp.ones((1, 8, 8, 1))
  variables = real_init("mnist_cnn", (8, 8, 1))
  _, state = model.apply(variables, x, train=True,
                         rngs={"dropout": jax.random.key(1)},
                         capture_intermediates=lambda m, _: isinstance(m, nn.Dropout),
                         mutable=["intermediates"])
  kept = np.asarray(state["intermediates"]["dropout"]["__call__"][0])
  relu = np.asarray(model.apply(variables, x, train=False,
                                capture_intermediates=True, mutable=["intermediates"]
                                )[1]["intermediates"]["relu3"]["__call__"][0])
  nonzero = relu != 0
  # Kept units are scaled by 1 / (1 - 0.5) = 2; about half are dropped.
  np.testing.assert_allclose(kept[nonzero & (kept != 0)], 2 * relu[nonzero & (kept != 0)],
                             rtol=1e-6)
  frac = (kept[nonzero] == 0).mean()
  assert 0.4 < frac < 0.6, frac


# --- Precision. ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_bfloat16_compute(name):
  shape = TRAIN_SHAPE[name]  # the initialized variables are shared with the training test
  x = jax.random.uniform(jax.random.key(0), (2, *shape))
  m32 = models.get_model(name, num_classes=OUTPUTS.get(name, 10))
  m16 = models.get_model(name, num_classes=OUTPUTS.get(name, 10), dtype=jnp.bfloat16)
  variables = real_init(name, shape)
  # bfloat16 compute does not change what init creates: float32 everywhere.
  abstract16 = jax.eval_shape(lambda: m16.init(jax.random.key(1), x, train=False))
  assert {leaf.dtype for leaf in jax.tree.leaves(abstract16)} == {jnp.dtype(jnp.float32)}
  assert jax.tree.map(jnp.shape, abstract16) == jax.tree.map(jnp.shape, variables)
  l16, l32 = jax.jit(lambda v, x: (m16.apply(v, x, train=False),
                                   m32.apply(v, x, train=False)))(variables, x)
  assert l16.dtype == jnp.float32
  scale = float(jnp.abs(l32).max())
  np.testing.assert_allclose(l16, l32, atol=0.05 * max(scale, 1.0))
  assert not np.array_equal(l16, l32)  # the bfloat16 path really ran in bfloat16


def test_dtype_names_are_accepted():
  conv = layers.Conv(2, (3, 3), dtype="bfloat16")
  x = jnp.ones((1, 4, 4, 1))
  variables = conv.init(jax.random.key(0), x)
  assert variables["params"]["kernel"].dtype == jnp.float32
  assert conv.apply(variables, x).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="'float33'"):
    layers.canonical_dtype("float33")


# --- BatchNorm. ------------------------------------------------------------------
def test_batchnorm_matches_flax():
  x = jax.random.normal(jax.random.key(0), (6, 3, 3, 5)) * 3 + 1
  ours = layers.BatchNorm(use_running_average=False)
  ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  variables = ref.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
      jnp.shape, variables)
  variables = {"params": {"scale": jnp.linspace(0.5, 2, 5), "bias": jnp.arange(5.0)},
               "batch_stats": {"mean": jnp.full(5, 0.3), "var": jnp.full(5, 2.0)}}
  y, s = ours.apply(variables, x, mutable=["batch_stats"])
  y_ref, s_ref = ref.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(y, y_ref, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), s, s_ref)
  # Evaluation mode uses the running averages.
  np.testing.assert_allclose(layers.BatchNorm(use_running_average=True).apply(variables, x),
                             nn.BatchNorm(use_running_average=True).apply(variables, x),
                             atol=1e-5)


def _bn_grads(module, variables, x, w):
  """Gradients (x, scale, bias) of a non-linear read-out of training-mode BatchNorm."""
  def loss(x, params):
    y, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                        mutable=["batch_stats"])
    return jnp.sum(w * jnp.sin(y))
  gx, gp = jax.grad(loss, argnums=(0, 1))(x, variables["params"])
  return gx, gp["scale"], gp["bias"]


def test_batchnorm_gradient_matches_flax_autodiff():
  # Reference: XLA's derivative of flax.linen.BatchNorm (an independent forward
  # formula: E[x^2] - E[x]^2 variance; ours is two-pass).
  x = jax.random.normal(jax.random.key(0), (6, 3, 3, 5)) * 3 + 1
  w = jax.random.normal(jax.random.key(2), x.shape)
  variables = {"params": {"scale": jnp.linspace(0.5, 2, 5), "bias": jnp.arange(5.0)},
               "batch_stats": {"mean": jnp.zeros(5), "var": jnp.ones(5)}}
  ours = _bn_grads(layers.BatchNorm(use_running_average=False), variables, x, w)
  ref = _bn_grads(nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5),
                  variables, x, w)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_batchnorm_ghost_gradient_equals_separate_groups():
  x = jax.random.normal(jax.random.key(0), (8, 2, 2, 3)) * jnp.array([1.0, 5.0, 0.1]) + 2
  w = jax.random.normal(jax.random.key(3), x.shape)
  plain = layers.BatchNorm(use_running_average=False)
  variables = plain.init(jax.random.key(1), x)
  variables = {"params": {"scale": jnp.array([0.5, 1.0, 2.0]), "bias": jnp.ones(3)},
               "batch_stats": variables["batch_stats"]}
  gx, gs, gb = _bn_grads(layers.BatchNorm(use_running_average=False, ghost_batches=2),
                         variables, x, w)
  halves = [_bn_grads(plain, variables, x[i:i + 4], w[i:i + 4]) for i in (0, 4)]
  np.testing.assert_allclose(gx, jnp.concatenate([halves[0][0], halves[1][0]]), atol=1e-5)
  np.testing.assert_allclose(gs, halves[0][1] + halves[1][1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gb, halves[0][2] + halves[1][2], rtol=1e-5, atol=1e-5)


def test_batchnorm_ghost_batches_equal_separate_groups():
  x = jax.random.normal(jax.random.key(0), (8, 2, 2, 3)) * jnp.array([1.0, 5.0, 0.1]) + 2
  ghost = layers.BatchNorm(use_running_average=False, ghost_batches=2)
  plain = layers.BatchNorm(use_running_average=False)
  variables = plain.init(jax.random.key(1), x)
  y, s = ghost.apply(variables, x, mutable=["batch_stats"])
  y0, s0 = plain.apply(variables, x[:4], mutable=["batch_stats"])
  y1, s1 = plain.apply(variables, x[4:], mutable=["batch_stats"])
  np.testing.assert_allclose(y, jnp.concatenate([y0, y1]), atol=1e-5)
  # The running-average update is linear in the batch statistic, so the update
  # with the mean over groups equals the mean of the per-group updates.
  jax.tree.map(lambda a, b, c: np.testing.assert_allclose(a, (b + c) / 2, rtol=1e-5), s, s0, s1)
  with pytest.raises(ValueError, match=r"ghost_batches \(3\) must divide the batch size \(8\)"):
    layers.BatchNorm(use_running_average=False, ghost_batches=3).apply(
        variables, x, mutable=["batch_stats"])


def test_batchnorm_axis_name_gives_global_statistics():
  x = jax.random.normal(jax.random.key(0), (8, 3, 3, 4)) * 2 + 1
  bn_sync = layers.BatchNorm(use_running_average=False, axis_name="replica")
  variables = layers.BatchNorm(use_running_average=False).init(jax.random.key(1), x)
  per_replica = jax.vmap(
      lambda xs: bn_sync.apply(variables, xs, mutable=["batch_stats"]),
      axis_name="replica")(x.reshape(2, 4, 3, 3, 4))
  y, s = per_replica
  y_all, s_all = layers.BatchNorm(use_running_average=False).apply(
      variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(y.reshape(x.shape), y_all, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5), s, s_all)


def test_model_ghost_batches_equal_separate_groups():
  model_g = models.get_model("bn_cnn", num_classes=10, bn_ghost_batches=2)
  model_1 = models.get_model("bn_cnn", num_classes=10)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  variables = real_init("bn_cnn", (8, 8, 1))
  out, _ = model_g.apply(variables, x, train=True, mutable=["batch_stats"])
  a, _ = model_1.apply(variables, x[:2], train=True, mutable=["batch_stats"])
  b, _ = model_1.apply(variables, x[2:], train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(out, jnp.concatenate([a, b]), atol=1e-4)
  full, _ = model_1.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(out, full, atol=1e-3)  # the grouping really changes the result


# --- Every conv and pool goes through fast_ops. -------------------------------------
def _count_primitives(jaxpr, names):
  count = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in names:
      count += 1
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      count += _count_primitives(sub, names)
  return count


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_convs_and_pools_only_through_fast_ops(name, monkeypatch):
  """Replaces fast_ops by spies built from known lax primitives, then checks that
  the model's jaxpr holds no conv or pooling primitive the spies did not emit."""
  calls = {"conv": 0, "pool": 0}

  def conv_spy(x, kernel, *, strides=(1, 1), padding="SAME", implementation="auto"):
    calls["conv"] += 1
    return jax.lax.conv_general_dilated(x, kernel, tuple(strides), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def pool_spy(x, window=(2, 2), strides=None, padding="VALID", *, implementation="auto"):
    calls["pool"] += 1
    strides = tuple(window) if strides is None else tuple(strides)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1),
                                 (1, *strides, 1), padding)

  monkeypatch.setattr(fast_ops, "conv2d", conv_spy)
  monkeypatch.setattr(fast_ops, "max_pool", pool_spy)
  monkeypatch.setattr(fast_ops, "avg_pool", pool_spy)  # same shapes; numerics irrelevant here
  model = models.get_model(name, num_classes=OUTPUTS.get(name, 10))
  x = jnp.zeros((2, 32, 32, 3))
  variables = abstract_init(model, (32, 32, 3))
  calls.update(conv=0, pool=0)
  jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, x).jaxpr
  n_kernels = sum(1 for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
                  if path[-1].key == "kernel" and leaf.ndim == 4)
  assert calls["conv"] == n_kernels > 0
  assert _count_primitives(jaxpr, {"conv_general_dilated"}) == calls["conv"]
  assert _count_primitives(jaxpr, {"reduce_window_max", "reduce_window_sum", "reduce_window",
                                   "reduce_window_min"}) == calls["pool"]
