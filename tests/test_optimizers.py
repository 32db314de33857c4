"""Tests for cnnjax.optimizers.

Reference values come from closed-form formulas written out here, from hand
derivations (stated next to each check), from SOURCE.md, and from PyTorch's
`torch.optim` (skipped when torch is not importable).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import optimizers
from cnnjax import config as config_lib

# The tutorials' rates (SOURCE.md, "Optimizers they name"), typed in by hand.
SOURCE_RATES = {"sgd": 0.01, "momentum": 0.01, "nesterov": 0.01,
                "adagrad": 0.01, "rmsprop": 0.001, "adam": 0.001,
                "adamax": 0.002, "nadam": 0.001}


def cfg(**overrides):
  c = config_lib.get_config().optimizer
  for k, v in overrides.items():
    c[k] = v
  return c


def tree_close(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


# A least-squares problem with an exact solution (Y = X W* + b*, minimum 0).
_rng = np.random.default_rng(0)
X = jnp.asarray(_rng.normal(size=(16, 4)), jnp.float32)
Y = X @ jnp.asarray(_rng.normal(size=(4, 3)), jnp.float32) + jnp.asarray(
    _rng.normal(size=3), jnp.float32)
P0 = {"kernel": jnp.full((4, 3), 0.5), "bias": jnp.full((3,), 0.5)}


def lsq_loss(p, x=X, y=Y):
  return jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2)


def run_steps(tx, params, n, loss=lsq_loss):
  @jax.jit
  def run(p):
    def body(_, carry):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return optax.apply_updates(p, u), s
    return jax.lax.fori_loop(0, n, body, (p, tx.init(p)))
  return run(params)


# -------------------------------------------------------------- every name

@pytest.mark.parametrize(
    "name", optimizers.names() + ["amsgrad", "adadelta", "sm3", "signum"])
def test_every_name_decreases_least_squares(name):
  overrides = {}
  if optimizers.default_learning_rate(name) is None:
    overrides["learning_rate"] = 0.01
  tx = optimizers.make_optimizer(cfg(name=name, **overrides), 200)
  params, state = run_steps(tx, P0, 200)
  before, after = float(lsq_loss(P0)), float(lsq_loss(params))
  # lion (lr 1e-4, sign updates) is the slowest: ~3.6% in 200 steps.
  assert after < 0.98 * before, (name, before, after)
  assert float(optimizers.learning_rate(state)) > 0


def test_names_and_accepted_optax_aliases():
  required = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam",
              "adamw", "adamax", "nadam", "nadamw", "radam", "lamb", "lars",
              "lion", "adabelief", "adafactor", "yogi", "novograd"]
  assert set(required) <= set(optimizers.names())
  extra = optimizers.optax_names()
  assert "amsgrad" in extra and "adadelta" in extra
  # Schedules, transforms and refused aliases are not optimizers here.
  for not_opt in ("scale", "cosine_decay_schedule", "clip", "lbfgs",
                  "polyak_sgd", "rprop", "chain"):
    assert not_opt not in extra
    with pytest.raises(ValueError, match="optimizer.name="):
      optimizers.validate(cfg(name=not_opt))


def test_source_default_learning_rates():
  for name, lr in SOURCE_RATES.items():
    assert optimizers.default_learning_rate(name) == lr
    state = optimizers.make_optimizer(cfg(name=name), 10).init(P0)
    np.testing.assert_allclose(optimizers.learning_rate(state), lr, rtol=1e-7)


def test_momentum_and_nesterov_presets():
  # Constant gradient g = 1, lr 0.01, momentum 0.9 (SOURCE.md). Heavy ball
  # (buf = 0.9 buf + g, update -lr buf): -0.01, -0.019. Nesterov
  # (update -lr (g + 0.9 buf)): -0.019, -0.0271.
  expected = {"momentum": [-0.01, -0.019], "nesterov": [-0.019, -0.0271],
              "sgd": [-0.01, -0.01]}
  p = {"kernel": jnp.ones((2, 2))}
  g = {"kernel": jnp.ones((2, 2))}
  for name, want in expected.items():
    tx = optimizers.make_optimizer(cfg(name=name), 10)
    s = tx.init(p)
    for w in want:
      u, s = tx.update(g, s, p)
      np.testing.assert_allclose(u["kernel"], w, rtol=1e-6)


# --------------------------------------------------------------- schedules

T, LR, W, A = 100, 0.1, 10, 0.1
STEPS = [0, 1, 5, 9, 10, 11, 24, 25, 32, 33, 37, 49, 50, 55, 56, 74, 75, 77,
         78, 99, 100, 130]


def closed_form(kind, t, warmup=W):
  """The schedules written from their definitions (not from optax)."""
  if kind == "onecycle":
    pct = warmup / T if warmup else 0.3  # PyTorch OneCycleLR: pct_start 0.3
    up = int(pct * T)
    lo, hi, end = LR / 25, LR, LR / 25 / 1e4
    cos_interp = lambda a, b, f: a + (b - a) * (1 - math.cos(math.pi * f)) / 2
    if t <= up:
      return cos_interp(lo, hi, t / up)
    return cos_interp(hi, end, min(t - up, T - up) / (T - up))
  if t < warmup:
    return LR * t / warmup
  d, s = T - warmup, t - warmup
  if kind == "constant":
    return LR
  if kind in ("cosine", "warmup_cosine"):
    return LR * (1 - A) * 0.5 * (1 + math.cos(math.pi * min(s, d) / d)) + A * LR
  if kind == "step":  # drops at round(0.5 T) and round(0.75 T), factor 0.1
    return LR * 0.1 ** ((t >= 50) + (t >= 75))
  if kind == "exponential":
    return max(LR * A ** (s / d), A * LR)
  if kind == "linear":
    return LR + (A * LR - LR) * min(s, d) / d
  if kind == "cosine_restarts":  # 1 / 0.25 = 4 cycles: 23, 23, 22, 22 if d=90
    if s >= d:
      return A * LR
    start = 0
    for length in [d // 4 + (i < d % 4) for i in range(4)]:
      if s < start + length:
        u = s - start
        return LR * (1 - A) * 0.5 * (1 + math.cos(math.pi * u / length)) + A * LR
      start += length
  raise AssertionError(kind)


@pytest.mark.parametrize("kind, warmup", [
    (k, w) for k in optimizers.SCHEDULES for w in (0, W)
    if (k, w) != ("warmup_cosine", 0)])  # refused (see validation tests)
def test_schedule_matches_closed_form(kind, warmup):
  c = cfg(learning_rate=LR, schedule=kind, warmup_steps=warmup,
          end_learning_rate_factor=A)
  sched = optimizers.make_schedule(c, T)
  for t in STEPS:
    want = closed_form(kind, t, warmup)
    np.testing.assert_allclose(float(sched(t)), want, rtol=2e-5, atol=1e-9,
                               err_msg=f"{kind} warmup={warmup} t={t}")


def test_learning_rate_follows_schedule_and_drives_sgd():
  c = cfg(name="sgd", learning_rate=LR, schedule="cosine", warmup_steps=W,
          end_learning_rate_factor=A)
  tx = optimizers.make_optimizer(c, T)
  p = {"kernel": jnp.ones((2, 2))}
  g = {"kernel": jnp.full((2, 2), 2.0)}
  update = jax.jit(tx.update)
  s = tx.init(p)
  for t in range(30):
    want = closed_form("cosine", t)
    np.testing.assert_allclose(optimizers.learning_rate(s), want, rtol=2e-5)
    u, s = update(g, s, p)
    # The rate read before the update is the one the update applies.
    np.testing.assert_allclose(u["kernel"], -2.0 * want, rtol=2e-5, atol=1e-9)


# ------------------------------------------------- decay, l2, masks

PARAMS = {
    "conv": {"kernel": jnp.arange(1.0, 1 + 3 * 3 * 2 * 4).reshape(3, 3, 2, 4)
             / 10, "bias": jnp.full((4,), 0.3)},
    "bn": {"scale": jnp.full((4,), 1.5), "bias": jnp.full((4,), -0.2)},
    "dense": {"kernel": jnp.full((8, 3), -0.7), "bias": jnp.full((3,), 0.1)},
}


def test_decay_mask_selects_kernels_only():
  mask = optimizers.decay_mask(PARAMS)
  assert mask == {"conv": {"kernel": True, "bias": False},
                  "bn": {"scale": False, "bias": False},
                  "dense": {"kernel": True, "bias": False}}


def test_decay_mask_on_flax_cnn_params():
  import flax.linen as nn

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3))(x)
      x = nn.BatchNorm(use_running_average=True)(x)
      return nn.Dense(2)(x.reshape(x.shape[0], -1))

  params = Tiny().init(jax.random.key(0), jnp.ones((1, 5, 5, 1)))["params"]
  tx = optimizers.make_optimizer(cfg(name="adamw", weight_decay=0.1), 10)
  zero = jax.tree.map(jnp.zeros_like, params)
  u, _ = tx.update(zero, tx.init(params), params)
  moved = {jax.tree_util.keystr(k): bool(np.any(np.asarray(v)))
           for k, v in jax.tree_util.tree_leaves_with_path(u)}
  assert moved == {"['BatchNorm_0']['bias']": False,
                   "['BatchNorm_0']['scale']": False,
                   "['Conv_0']['bias']": False, "['Conv_0']['kernel']": True,
                   "['Dense_0']['bias']": False, "['Dense_0']['kernel']": True}


@pytest.mark.parametrize("key", ["weight_decay", "l2"])
def test_decay_shrinks_kernels_exactly_and_leaves_biases(key):
  lr, wd = 0.1, 0.01
  tx = optimizers.make_optimizer(cfg(name="sgd", learning_rate=lr,
                                     **{key: wd}), 10)
  zero = jax.tree.map(jnp.zeros_like, PARAMS)
  u, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
  # With zero gradient, SGD moves a decayed weight by -lr * wd * w (for l2,
  # the gradient of 0.5 wd w^2 is wd w); undecayed ones do not move.
  for path, (upd, w) in zip(
      jax.tree_util.tree_leaves_with_path(u),
      zip(jax.tree.leaves(u), jax.tree.leaves(PARAMS))):
    name = jax.tree_util.keystr(path[0])
    if "kernel" in name:
      np.testing.assert_allclose(upd, -lr * wd * w, rtol=1e-6)
    else:
      assert not np.any(np.asarray(upd)), name


def test_l2_is_loss_term_and_differs_from_decoupled_decay_for_adam():
  lr, l2 = 0.01, 0.05
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)), jnp.float32)

  def loss(p):
    h = x @ p["dense"]["kernel"][:3, :] + p["dense"]["bias"]
    return jnp.mean(h ** 2) + jnp.sum(p["bn"]["scale"] ** 2) + jnp.sum(
        p["conv"]["kernel"] ** 3) * 1e-3 + jnp.sum(p["conv"]["bias"])

  def loss_with_l2(p):
    kernels = [p["conv"]["kernel"], p["dense"]["kernel"]]
    return loss(p) + 0.5 * l2 * sum(jnp.sum(k ** 2) for k in kernels)

  coupled = optimizers.make_optimizer(
      cfg(name="adam", learning_rate=lr, l2=l2), 10)
  plain = optimizers.make_optimizer(cfg(name="adam", learning_rate=lr), 10)
  decoupled = optimizers.make_optimizer(
      cfg(name="adam", learning_rate=lr, weight_decay=l2), 10)

  @jax.jit
  def trajectories():
    pc = pp = pd = PARAMS
    sc, sp = coupled.init(pc), plain.init(pp)
    sd, sr = decoupled.init(pd), plain.init(pd)
    pairs = []
    for _ in range(3):
      uc, sc = coupled.update(jax.grad(loss)(pc), sc, pc)
      up, sp = plain.update(jax.grad(loss_with_l2)(pp), sp, pp)
      pairs.append((uc, up))
      pc, pp = optax.apply_updates(pc, uc), optax.apply_updates(pp, up)
      # Decoupled: Adam's step on the plain loss gradient, then -lr * wd * w
      # on kernels. Adam's moments depend only on the gradients, so a plain
      # Adam fed the same gradients gives the first part.
      g = jax.grad(loss)(pd)
      ud, sd = decoupled.update(g, sd, pd)
      ref, sr = plain.update(g, sr, pd)
      want = jax.tree.map(lambda r, w, m: r - lr * l2 * w * m, ref, pd,
                          optimizers.decay_mask(pd))
      pairs.append((ud, want))
      pd = optax.apply_updates(pd, ud)
    return pairs, pc, pd

  pairs, pc, pd = trajectories()
  for got, want in pairs:
    tree_close(got, want, rtol=1e-5, atol=1e-8)
  # Adam rescales the coupled l2 gradient with the rest; decoupled decay is
  # not rescaled, so the two trajectories differ.
  diff = np.abs(np.asarray(pc["dense"]["kernel"] - pd["dense"]["kernel"]))
  assert diff.max() > 1e-4


# ---------------------------------------------------- accumulation, scale

def test_grad_accum_equals_one_step_on_the_whole_batch():
  k, lr = 4, 0.1
  x = jnp.asarray(np.random.default_rng(2).normal(size=(16, 4)), jnp.float32)
  y = x @ jnp.ones((4, 3))
  loss = lambda p, xb, yb: lsq_loss(p, xb, yb)

  acc = optimizers.make_optimizer(
      cfg(name="momentum", learning_rate=lr, grad_accum_steps=k), 8)
  one = optimizers.make_optimizer(cfg(name="momentum", learning_rate=lr), 2)
  p_acc, s_acc = P0, acc.init(P0)
  p_one, s_one = P0, one.init(P0)
  acc_step = jax.jit(lambda g, s, p: acc.update(g, s, p))
  grad = jax.jit(jax.grad(loss))
  for _ in range(2):  # two optimizer steps, so momentum state matters too
    for i in range(k):
      sl = slice(4 * i, 4 * i + 4)
      u, s_acc = acc_step(grad(p_acc, x[sl], y[sl]), s_acc, p_acc)
      if i < k - 1:
        assert not any(np.any(np.asarray(v)) for v in jax.tree.leaves(u))
      p_acc = optax.apply_updates(p_acc, u)
    u, s_one = one.update(jax.grad(loss)(p_one, x, y), s_one, p_one)
    p_one = optax.apply_updates(p_one, u)
    tree_close(p_acc, p_one, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("wrappers", [
    {}, {"grad_accum_steps": 2}, {"grad_accum_steps": 2, "clip_global_norm": 10.0}])
def test_scale_learning_rate_halves_next_sgd_update(wrappers):
  k = wrappers.get("grad_accum_steps", 1)
  tx = optimizers.make_optimizer(cfg(name="sgd", learning_rate=0.1,
                                     **wrappers), 20)
  p = {"kernel": jnp.ones((2, 2))}
  g = {"kernel": jnp.full((2, 2), 3.0)}
  s = tx.init(p)
  for _ in range(k):
    u1, s = tx.update(g, s, p)
  np.testing.assert_allclose(u1["kernel"], -0.3, rtol=1e-6)
  halved = jax.jit(optimizers.scale_learning_rate)(s, 0.5)
  np.testing.assert_allclose(optimizers.learning_rate(s), 0.1, rtol=1e-6)
  np.testing.assert_allclose(optimizers.learning_rate(halved), 0.05, rtol=1e-6)
  for _ in range(k):
    u2, halved = tx.update(g, halved, p)
  np.testing.assert_allclose(u2["kernel"], 0.5 * u1["kernel"], rtol=1e-6)


def test_set_learning_rate_scale_does_not_compound():
  # A rollback that restores a state already scaled by 0.5 and wants 0.25
  # overall: scaling would give 0.125, setting gives 0.25.
  tx = optimizers.make_optimizer(cfg(name="sgd", learning_rate=0.1), 10)
  s = optimizers.scale_learning_rate(tx.init(P0), 0.5)
  np.testing.assert_allclose(optimizers.learning_rate_scale(s), 0.5)
  s = optimizers.set_learning_rate_scale(s, 0.25)
  np.testing.assert_allclose(optimizers.learning_rate_scale(s), 0.25)
  np.testing.assert_allclose(optimizers.learning_rate(s), 0.025, rtol=1e-6)
  g = jax.tree.map(jnp.ones_like, P0)
  u, _ = tx.update(g, s, P0)
  np.testing.assert_allclose(u["bias"], -0.025, rtol=1e-6)
  with pytest.raises(ValueError, match="factor=-0.5"):
    optimizers.scale_learning_rate(s, -0.5)


@pytest.mark.parametrize("name", optimizers.names())
def test_scale_acts_on_every_named_optimizer(name):
  tx = optimizers.make_optimizer(cfg(name=name), 10)
  g = jax.tree.map(lambda p: jnp.full_like(p, 0.3), P0)
  s = tx.init(P0)
  u1, _ = tx.update(g, s, P0)
  u2, _ = tx.update(g, optimizers.scale_learning_rate(s, 0.25), P0)
  tree_close(u2, jax.tree.map(lambda u: 0.25 * u, u1), rtol=1e-5, atol=1e-9)


def test_clipping():
  p = {"kernel": jnp.ones((2, 2))}
  g = {"kernel": jnp.array([[3.0, -4.0], [0.0, 0.0]])}  # global norm 5
  tx = optimizers.make_optimizer(cfg(name="sgd", learning_rate=1.0,
                                     clip_global_norm=1.0), 10)
  u, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(u["kernel"], [[-0.6, 0.8], [0, 0]], rtol=1e-6)
  tx = optimizers.make_optimizer(cfg(name="sgd", learning_rate=1.0,
                                     clip_value=1.0), 10)
  u, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(u["kernel"], [[-1.0, 1.0], [0, 0]], rtol=1e-6)


def test_learning_rate_rejects_foreign_state():
  with pytest.raises(ValueError, match="learning-rate states"):
    optimizers.learning_rate(optax.sgd(0.1).init(P0))


# -------------------------------------------------------------- validation

@pytest.mark.parametrize("overrides, key, value", [
    ({"name": "adamm"}, "name", "adamm"),
    ({"name": "cosine_decay_schedule"}, "name", "cosine_decay_schedule"),
    ({"learning_rate": -0.1}, "learning_rate", -0.1),
    ({"name": "sm3"}, "learning_rate", None),
    ({"schedule": "cosin"}, "schedule", "cosin"),
    ({"weight_decay": -1e-4}, "weight_decay", -1e-4),
    ({"l2": -1.0}, "l2", -1.0),
    ({"clip_global_norm": -1.0}, "clip_global_norm", -1.0),
    ({"grad_accum_steps": 0}, "grad_accum_steps", 0),
    ({"ema_decay": 1.0}, "ema_decay", 1.0),
    ({"warmup_steps": -1}, "warmup_steps", -1),
    ({"warmup_steps": 100}, "warmup_steps", 100),
    ({"schedule": "warmup_cosine"}, "warmup_steps", 0),
    ({"step_boundaries": (0.75, 0.5)}, "step_boundaries", (0.75, 0.5)),
    ({"step_boundaries": (0.5, 1.0)}, "step_boundaries", (0.5, 1.0)),
    ({"name": "sgd", "b1": 0.9}, "b1", 0.9),
    ({"b2": 1.5}, "b2", 1.5),
    ({"schedule": "exponential"}, "end_learning_rate_factor", 0.0),
])
def test_validation_messages_name_key_and_value(overrides, key, value):
  with pytest.raises(ValueError) as e:
    optimizers.make_optimizer(cfg(**overrides), total_steps=100)
  msg = str(e.value)
  assert msg.startswith(f"optimizer.{key}={value!r} "), msg
  assert "\n" not in msg
  if key == "name":
    assert "accepted: sgd, momentum, nesterov" in msg
  if key == "schedule":
    assert "constant, cosine, warmup_cosine" in msg


def test_validation_accepts_base_config_and_checks_total_steps():
  optimizers.validate(config_lib.get_config().optimizer)
  with pytest.raises(ValueError, match="total_steps=0"):
    optimizers.make_optimizer(cfg(), 0)
  with pytest.raises(ValueError, match="optimizer.grad_accum_steps=4"):
    optimizers.make_optimizer(cfg(grad_accum_steps=4), 3)


# ------------------------------------------------------------ PyTorch check

# (our name, config overrides, torch optimizer name, torch kwargs).
# Conventions reconciled by choosing the torch arguments (see
# README, "Optimizers"): RMSprop alpha 0.9 (torch default 0.99); Adagrad
# initial accumulator 0.1 (torch default 0); NAdam momentum_decay -> infinity
# (torch's Dozat schedule mu_t = b1 (1 - 0.5 * 0.96^(0.004 t)) becomes b1).
# Remaining differences are eps placement: optax sqrt(v + eps) vs torch
# sqrt(v) + eps (RMSprop, Adagrad), and Adamax max(b2 u, |g|) + eps vs
# max(b2 u, |g| + eps): relative effect ~eps / sqrt(v), below 1e-5 here.
TORCH_CASES = [
    ("momentum", {}, "SGD", {"momentum": 0.9}),
    ("nesterov", {}, "SGD", {"momentum": 0.9, "nesterov": True}),
    ("adagrad", {"learning_rate": 0.1}, "Adagrad",
     {"initial_accumulator_value": 0.1, "eps": 1e-10}),
    ("rmsprop", {}, "RMSprop", {"alpha": 0.9, "eps": 1e-8}),
    ("adam", {}, "Adam", {}),
    ("adamw", {"weight_decay": 0.05}, "AdamW", {"weight_decay": 0.05}),
    ("adamax", {}, "Adamax", {}),
    ("nadam", {}, "NAdam", {"momentum_decay": 1e12}),
]


@pytest.mark.parametrize("name, overrides, torch_name, torch_kwargs",
                         TORCH_CASES)
def test_matches_torch_optim(name, overrides, torch_name, torch_kwargs):
  torch = pytest.importorskip("torch")
  c = cfg(name=name, **overrides)
  lr = c.learning_rate or optimizers.default_learning_rate(name)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(12, 3)).astype(np.float32)
  y = rng.normal(size=(12, 2)).astype(np.float32)
  k0 = rng.normal(size=(3, 2)).astype(np.float32)
  b0 = rng.normal(size=(2,)).astype(np.float32)

  # PyTorch: decay on the kernel only, as our mask does (param groups).
  kt = torch.tensor(k0, requires_grad=True)
  bt = torch.tensor(b0, requires_grad=True)
  groups = [{"params": [kt]}, {"params": [bt]}]
  if "weight_decay" in torch_kwargs:
    groups[1]["weight_decay"] = 0.0
  opt = getattr(torch.optim, torch_name)(groups, lr=lr, **torch_kwargs)
  xt, yt = torch.tensor(x), torch.tensor(y)

  tx = optimizers.make_optimizer(c, 100)
  p = {"kernel": jnp.asarray(k0), "bias": jnp.asarray(b0)}
  s = tx.init(p)
  loss = lambda p: jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  for t in range(25):
    opt.zero_grad()
    torch.mean((xt @ kt + bt - yt) ** 2).backward()
    opt.step()
    p, s = step(p, s)
    np.testing.assert_allclose(p["kernel"], kt.detach().numpy(), rtol=1e-4,
                               atol=1e-5, err_msg=f"{name} step {t}")
    np.testing.assert_allclose(p["bias"], bt.detach().numpy(), rtol=1e-4,
                               atol=1e-5, err_msg=f"{name} step {t}")


# ------------------------------------------------------- switched optimizers

def _descend(tx, state, n=20):
  """``n`` steps of ``tx`` on the least-squares problem from ``state``."""
  @jax.jit
  def run(p, s):
    def body(_, carry):
      p, s = carry
      u, s = tx.update(jax.grad(lsq_loss)(p), s, p)
      return optax.apply_updates(p, u), s
    return jax.lax.fori_loop(0, n, body, (p, s))
  return run(P0, state)


@pytest.mark.parametrize("flat", [False, True], ids=["tree", "flat"])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_switched_runs_exactly_its_chosen_chain(index, flat):
  """Reference: each chain run on its own (on the parameter tree) for 20 steps; with
  ``flat`` the switched chains work on the raveled parameters (all three per-coordinate)."""
  chains = [optimizers.make_optimizer(cfg(name=n, schedule="cosine"), 20)
            for n in ("momentum", "adam", "rmsprop")]
  tx = optimizers.switched(chains, flat=flat)
  start = optimizers.set_learning_rate_scale(tx.init(P0), 0.01)
  params, state = _descend(tx, optimizers.with_switch_index(start, index))
  alone = chains[index]
  ref_params, ref_state = _descend(alone, optimizers.set_learning_rate_scale(
      alone.init(P0), 0.01))
  tree_close(params, ref_params, rtol=1e-6, atol=1e-7)
  assert int(optimizers.switch_index(state)) == index
  # Only the chosen chain's state moved; the rate read is the chosen chain's.
  for i, sub in enumerate(state.states):
    count = optimizers._lr_state(sub).count
    assert int(count) == (20 if i == index else 0)
  np.testing.assert_allclose(optimizers.learning_rate(state),
                             optimizers.learning_rate(ref_state), rtol=1e-7)
  assert optimizers.switch_index(ref_state) is None
  with pytest.raises(ValueError, match="no switched state"):
    optimizers.with_switch_index(ref_state, 0)
  # Flat: every state is one vector of all 15 parameters, not a tree of them.
  assert {x.shape for x in jax.tree.leaves(state.states[1]) if x.ndim} == (
      {(15,)} if flat else {(4, 3), (3,)})


@pytest.mark.parametrize("name,overrides,expected", [
    ("adam", {}, True), ("sgd", {}, True), ("nadam", {}, True),
    ("lion", {}, False), ("lion", {"weight_decay": 0.0}, True),   # lion's default decay 1e-3
    ("adamw", {}, False),                       # default decay 1e-4, kernels only
    ("adamw", {"weight_decay": 0.0}, True),
    ("adam", {"l2": 1e-4}, False),              # masked coupled L2
    ("adam", {"clip_global_norm": 1.0}, True),  # one vector's norm is the global norm
    ("lamb", {"weight_decay": 0.0}, False),     # per-tensor trust ratio
    ("adafactor", {}, False),                   # factored moments of matrices
    ("sam", {"sam_base": "adam"}, False),
])
def test_per_coordinate(name, overrides, expected):
  assert optimizers.per_coordinate(cfg(name=name, **overrides)) is expected


@pytest.mark.parametrize("name", sorted(optimizers._PER_COORDINATE))
def test_flat_switch_equals_each_per_coordinate_chain(name):
  """Every rule `per_coordinate` admits, on the raveled parameters inside a flat switch,
  against the same chain alone on the tree (20 steps of the least-squares problem, decay
  off where the rule has a default one)."""
  overrides = {"weight_decay": 0.0} if optimizers.default_weight_decay(name) else {}
  if optimizers.default_learning_rate(name) is None:
    overrides["learning_rate"] = 0.01
  config = cfg(name=name, schedule="warmup_cosine", warmup_steps=3, clip_global_norm=1.0,
               **overrides)
  assert optimizers.per_coordinate(config)
  chain = optimizers.make_optimizer(config, 20)
  flat = optimizers.switched([chain], flat=True)
  flat_params, _ = _descend(flat, flat.init(P0))
  ref_params, _ = _descend(chain, chain.init(P0))
  tree_close(flat_params, ref_params, rtol=1e-5, atol=1e-6)
  assert not np.allclose(flat_params["kernel"], P0["kernel"])   # it moved


def test_flat_switch_refuses_mixed_dtypes():
  params = {"w": jnp.ones(2), "h": jnp.ones(2, jnp.bfloat16)}
  with pytest.raises(ValueError, match="one dtype"):
    optimizers.switched([optax.sgd(0.1)], flat=True).init(params)


def test_flat_switch_would_change_a_per_tensor_rule():
  """Why `per_coordinate` excludes LAMB: its trust ratio ||w|| / ||u|| is per tensor, so
  on the raveled parameters (one tensor) its updates differ from LAMB on the tree."""
  chain = optimizers.make_optimizer(cfg(name="lamb", weight_decay=0.0, learning_rate=0.1), 20)
  tree_params, _ = _descend(optimizers.switched([chain]), optimizers.switched([chain]).init(P0))
  flat = optimizers.switched([chain], flat=True)
  flat_params, _ = _descend(flat, flat.init(P0))
  ref_params, _ = _descend(chain, chain.init(P0))
  tree_close(tree_params, ref_params, rtol=1e-6, atol=1e-7)
  # 20 steps at rate 0.1 from 0.5: the two differ by 0.18 (kernel) and 0.23 (bias).
  assert np.abs(flat_params["kernel"] - ref_params["kernel"]).max() > 0.05
