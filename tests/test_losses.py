"""Tests of cnnjax.losses: values, transformations, masks, numerics, errors.

Reference values come from independent numpy re-derivations (float64) of each
loss's published definition (Keras / PyTorch documentation, the cited paper),
written here from the formula and not from the code under test, or from hand
calculation where stated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import cnnjax.losses as L

EPS = 1e-7  # Keras' probability clip.
B, C = 4, 5
RNG = np.random.default_rng(0)


def f32(x):
  return np.asarray(x, np.float32)


# --- numpy references -----------------------------------------------------------


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def np_onehot(y, c):
  return np.eye(c)[np.asarray(y)]


def np_mean1(x):
  x = np.asarray(x, np.float64)
  return x.reshape(x.shape[0], -1).mean(1)


def np_bce_logits(x, t):
  p = np_sigmoid(x)
  return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def np_focal_keras(logits, t, gamma, alpha):
  # keras.losses.CategoricalFocalCrossentropy: clip softmax, then
  # -sum(alpha * (1 - p)^gamma * t * log p).
  p = np.clip(np.exp(np_log_softmax(logits)), EPS, 1 - EPS)
  return -(alpha * (1 - p) ** gamma * t * np.log(p)).sum(-1)


def np_sigmoid_focal(x, t, alpha, gamma):
  # torchvision.ops.sigmoid_focal_loss, from its documented definition.
  p = np_sigmoid(x)
  ce = np_bce_logits(x, t)
  p_t = p * t + (1 - p) * (1 - t)
  loss = ce * (1 - p_t) ** gamma
  if alpha is not None:
    loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
  return loss


def np_multi_margin(x, y, p, margin, w=None):
  out = np.zeros(x.shape[0])
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      if j != y[i]:
        out[i] += max(0.0, margin - x[i, y[i]] + x[i, j]) ** p
    out[i] /= x.shape[1]
    if w is not None:
      out[i] *= w[y[i]]
  return out


def np_hinge_labels(t):
  return 2 * t - 1 if np.all((t == 0) | (t == 1)) else t


# --- fixed inputs -------------------------------------------------------------------

REG_P = f32(RNG.normal(size=(B, 3, 2)) * 2)
REG_T = f32(RNG.normal(size=(B, 3, 2)) * 2)
POS_P = f32(RNG.uniform(0.1, 3.0, size=(B, 6)))
POS_T = f32(RNG.uniform(0.1, 3.0, size=(B, 6)))
VAR = f32(RNG.uniform(0.2, 2.0, size=(B, 6)))
LOGITS = f32(RNG.normal(size=(B, C)) * 2)
LABELS = np.array([0, 3, 4, 1], np.int32)
ONEHOT = f32(np_onehot(LABELS, C))
SOFT_T = f32(np.exp(np_log_softmax(RNG.normal(size=(B, C)))))
BIN_X = f32(RNG.normal(size=(B, 3)) * 2)
BIN_T = f32(RNG.integers(0, 2, size=(B, 3)))
SIGNED_T = 2 * BIN_T - 1
PROBS = f32(np.exp(np_log_softmax(LOGITS)))
BIN_P = f32(np_sigmoid(BIN_X))
DIST = f32(RNG.uniform(0.0, 2.0, size=(B, 3)))
EMB = tuple(f32(RNG.normal(size=(B, 8))) for _ in range(3))
MASK_X = f32(RNG.normal(size=(B, 4, 4, 3)))
MASK_T = f32(np_onehot(RNG.integers(0, 3, size=(B, 4, 4)), 3))
SEQ_X = f32(RNG.normal(size=(B, 6, C)) * 2)
SEQ_Y = RNG.integers(0, C, size=(B, 6)).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  name: str
  args: tuple
  ref: Callable[..., np.ndarray]
  kwargs: dict = dataclasses.field(default_factory=dict)


def _tversky_ref(p, t, a, b, s):
  tp = (p * t).reshape(B, -1).sum(1)
  fp = (p * (1 - t)).reshape(B, -1).sum(1)
  fn = ((1 - p) * t).reshape(B, -1).sum(1)
  return 1 - (tp + s) / (tp + a * fp + b * fn + s)


def _dice_ref(p, t, s):
  inter = (p * t).reshape(B, -1).sum(1)
  return 1 - (2 * inter + s) / (p.reshape(B, -1).sum(1) + t.reshape(B, -1).sum(1) + s)


def _softmax(x):
  return np.exp(np_log_softmax(x))


def _triplet_ref(a, p, n, margin=1.0, deg=2, eps=1e-6):
  dp = (np.abs(a - p + eps) ** deg).sum(-1) ** (1 / deg)
  dn = (np.abs(a - n + eps) ** deg).sum(-1) ** (1 / deg)
  return np.maximum(dp - dn + margin, 0)


def _seq_ref(x, y, m):
  ce = -np.take_along_axis(np_log_softmax(x), y[..., None], -1)[..., 0]
  return (ce * m).sum(1) / np.maximum(m.sum(1), 1)


SEQ_MASK = np.array([[1] * 6, [1] * 3 + [0] * 3, [0] * 6, [1] * 5 + [0]], bool)

CASES = [
    Case("mse", "mean_squared_error", (REG_P, REG_T), lambda p, t: np_mean1((p - t) ** 2)),
    Case("mae", "mean_absolute_error", (REG_P, REG_T), lambda p, t: np_mean1(np.abs(p - t))),
    Case("huber", "huber", (REG_P, REG_T),
         lambda p, t: np_mean1(np.where(np.abs(p - t) <= 1.5, 0.5 * (p - t) ** 2,
                                        1.5 * (np.abs(p - t) - 0.75))), dict(delta=1.5)),
    Case("smooth_l1", "smooth_l1", (REG_P, REG_T),
         lambda p, t: np_mean1(np.where(np.abs(p - t) < 0.5, 0.5 * (p - t) ** 2 / 0.5,
                                        np.abs(p - t) - 0.25)), dict(beta=0.5)),
    Case("smooth_l1_beta0", "smooth_l1", (REG_P, REG_T),
         lambda p, t: np_mean1(np.abs(p - t)), dict(beta=0.0)),
    Case("log_cosh", "log_cosh", (REG_P, REG_T),
         lambda p, t: np_mean1(np.log(np.cosh(p.astype(np.float64) - t)))),
    Case("msle", "mean_squared_log_error", (POS_P, POS_T),
         lambda p, t: np_mean1((np.log1p(np.maximum(p, EPS)) - np.log1p(np.maximum(t, EPS))) ** 2)),
    Case("mape", "mean_absolute_percentage_error", (REG_P, REG_T),
         lambda p, t: 100 * np_mean1(np.abs(t - p) / np.maximum(np.abs(t), EPS))),
    Case("poisson", "poisson", (POS_P, POS_T),
         lambda p, t: np_mean1(p - t * np.log(p.astype(np.float64) + EPS))),
    Case("poisson_log", "poisson", (REG_P, POS_T[:, :6].reshape(B, 3, 2)),
         lambda p, t: np_mean1(np.exp(p.astype(np.float64)) - t * p), dict(log_input=True)),
    Case("gaussian_nll", "gaussian_nll", ((POS_P, VAR), POS_T),
         lambda mv, t: np_mean1(0.5 * (np.log(mv[1]) + (mv[0] - t) ** 2 / mv[1])
                                + 0.5 * np.log(2 * np.pi)), dict(full=True)),
    Case("cosine", "cosine_similarity", (REG_P, REG_T),
         lambda p, t: -np_mean1((p * t).sum(-1) / np.linalg.norm(p, axis=-1)
                                / np.linalg.norm(t, axis=-1))),
    Case("bce", "binary_cross_entropy", (BIN_X, BIN_T),
         lambda x, t: np_mean1(np_bce_logits(x, t))),
    Case("bce_smooth", "binary_cross_entropy", (BIN_X, BIN_T),
         lambda x, t: np_mean1(np_bce_logits(x, t * 0.8 + 0.1)), dict(label_smoothing=0.2)),
    Case("bce_probs", "binary_cross_entropy", (BIN_P, BIN_T),
         lambda p, t: np_mean1(-(t * np.log(np.clip(p, EPS, 1 - EPS))
                                 + (1 - t) * np.log(1 - np.clip(p, EPS, 1 - EPS)))),
         dict(from_logits=False)),
    Case("cce", "categorical_cross_entropy", (LOGITS, SOFT_T),
         lambda x, t: -(t * np_log_softmax(x)).sum(-1)),
    Case("cce_smooth", "categorical_cross_entropy", (LOGITS, ONEHOT),
         lambda x, t: -((t * 0.9 + 0.1 / C) * np_log_softmax(x)).sum(-1),
         dict(label_smoothing=0.1)),
    Case("cce_probs", "categorical_cross_entropy", (PROBS * 3, ONEHOT),
         lambda p, t: -(t * np.log(np.clip(p / p.sum(-1, keepdims=True), EPS, 1 - EPS))).sum(-1),
         dict(from_logits=False)),
    Case("sparse", "sparse_categorical_cross_entropy", (LOGITS, LABELS),
         lambda x, y: -np_log_softmax(x)[np.arange(B), y]),
    Case("sparse_smooth_weights", "sparse_categorical_cross_entropy", (LOGITS, LABELS),
         lambda x, y: np.array([1, 2, 3, 4, 5.0])[y] * (
             -0.7 * np_log_softmax(x)[np.arange(B), y] - 0.3 * np_log_softmax(x).mean(-1)),
         dict(label_smoothing=0.3, class_weights=(1, 2, 3, 4, 5))),
    Case("sparse_probs", "sparse_categorical_cross_entropy", (PROBS, LABELS),
         lambda p, y: -np.log(np.clip(p, EPS, 1 - EPS))[np.arange(B), y],
         dict(from_logits=False)),
    Case("kl", "kl_divergence", (LOGITS, SOFT_T),
         lambda x, t: (t * (np.log(t) - np_log_softmax(x))).sum(-1)),
    Case("focal", "focal", (LOGITS, ONEHOT),
         lambda x, t: np_focal_keras(x, t, 2.0, 0.25)),
    Case("focal_per_class", "focal", (LOGITS, SOFT_T),
         lambda x, t: np_focal_keras(x, t, 1.5, np.array([0.1, 0.2, 0.3, 0.2, 0.2])),
         dict(gamma=1.5, alpha=(0.1, 0.2, 0.3, 0.2, 0.2))),
    Case("binary_focal", "binary_focal", (BIN_X, BIN_T),
         lambda x, t: np_mean1(np_sigmoid_focal(x, t, 0.25, 2.0))),
    Case("binary_focal_noalpha", "binary_focal", (BIN_X, BIN_T),
         lambda x, t: np_mean1(np_sigmoid_focal(x, t, None, 3.0)), dict(alpha=None, gamma=3.0)),
    Case("poly1", "poly1_cross_entropy", (LOGITS, ONEHOT),
         lambda x, t: -(t * np_log_softmax(x)).sum(-1)
         + 1.5 * (1 - (t * _softmax(x)).sum(-1)), dict(epsilon=1.5)),
    Case("hinge", "hinge", (BIN_X, BIN_T),
         lambda x, t: np_mean1(np.maximum(1 - np_hinge_labels(t) * x, 0))),
    Case("hinge_signed", "hinge", (BIN_X, SIGNED_T),
         lambda x, t: np_mean1(np.maximum(1 - t * x, 0))),
    Case("squared_hinge", "squared_hinge", (BIN_X, BIN_T),
         lambda x, t: np_mean1(np.maximum(1 - np_hinge_labels(t) * x, 0) ** 2)),
    Case("categorical_hinge", "categorical_hinge", (LOGITS, ONEHOT),
         lambda x, t: np.maximum(((1 - t) * x).max(-1) - (t * x).sum(-1) + 1, 0)),
    Case("multi_margin", "multi_margin", (LOGITS, LABELS),
         lambda x, y: np_multi_margin(x, y, 1, 1.0)),
    Case("multi_margin_p2_w", "multi_margin", (LOGITS, LABELS),
         lambda x, y: np_multi_margin(x, y, 2, 0.5, [1, 2, 3, 4, 5.0]),
         dict(p=2, margin=0.5, class_weights=[1, 2, 3, 4, 5.0])),
    Case("hinge_embedding", "hinge_embedding", (DIST, SIGNED_T),
         lambda d, t: np_mean1(np.where(t == 1, d, np.maximum(0, 1.0 - d)))),
    Case("contrastive", "contrastive", (DIST, BIN_T),
         lambda d, y: np_mean1(y * d ** 2 + (1 - y) * np.maximum(1.5 - d, 0) ** 2),
         dict(margin=1.5)),
    Case("triplet", "triplet_margin", (EMB, None),
         lambda e, _: _triplet_ref(*e)),
    Case("triplet_p1", "triplet_margin", (EMB, None),
         lambda e, _: _triplet_ref(*e, margin=2.0, deg=1), dict(p=1, margin=2.0)),
    Case("dice", "dice", (MASK_X, MASK_T),
         lambda x, t: _dice_ref(np_sigmoid(x), t, 1.0)),
    Case("dice_softmax", "dice", (MASK_X, MASK_T),
         lambda x, t: _dice_ref(_softmax(x), t, 0.5), dict(activation="softmax", smooth=0.5)),
    Case("tversky", "tversky", (MASK_X, MASK_T),
         lambda x, t: _tversky_ref(np_sigmoid(x), t, 0.3, 0.7, 1.0), dict(alpha=0.3, beta=0.7)),
    Case("dice_ce", "dice_cross_entropy", (MASK_X, MASK_T),
         lambda x, t: _dice_ref(_softmax(x), t, 1.0)
         + 0.5 * np_mean1(-(t * np_log_softmax(x)).sum(-1)),
         dict(activation="softmax", ce_weight=0.5)),
    Case("dice_ce_sigmoid", "dice_cross_entropy", (MASK_X, MASK_T),
         lambda x, t: _dice_ref(np_sigmoid(x), t, 1.0) + np_mean1(np_bce_logits(x, t))),
    Case("sequence_ce", "sequence_cross_entropy", (SEQ_X, SEQ_Y),
         lambda x, y: _seq_ref(x, y, SEQ_MASK.astype(float)), dict(mask=SEQ_MASK)),
    Case("gan_d", "gan_discriminator", ((BIN_X, BIN_X[::-1].copy()), None),
         lambda rf, _: np_mean1(-0.9 * np.log(np_sigmoid(rf[0]))
                                - 0.1 * np.log(1 - np_sigmoid(rf[0]))
                                - np.log(1 - np_sigmoid(rf[1]))), dict(label_smoothing=0.1)),
    Case("gan_g", "gan_generator", (BIN_X, None),
         lambda x, _: np_mean1(-np.log(np_sigmoid(x)))),
]


def _call(case: Case, *args):
  return L.get(case.name)(*args, **case.kwargs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_numpy_reference(case):
  got = _call(case, *case.args)
  want = case.ref(*case.args)
  assert got.shape == (B,)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_jit_equals_eager_and_vmap_is_per_example(case):
  eager = _call(case, *case.args)
  jitted = jax.jit(lambda *a: _call(case, *a))(*case.args)
  chex.assert_shape(jitted, (B,))
  chex.assert_trees_all_close(jitted, eager, rtol=1e-6, atol=1e-6)
  # Each example's loss only depends on that example: vmapping a batch of one
  # over the batch axis gives the same values.
  pred, targ = case.args
  one = lambda p, t: _call(case, jax.tree.map(lambda a: a[None], p),
                           None if t is None else t[None])[0]
  kw = case.kwargs
  if "mask" in kw:
    one = lambda p, t, m: L.get(case.name)(p[None], t[None], mask=m[None])[0]
    mapped = jax.vmap(one)(pred, targ, kw["mask"])
  elif targ is None:
    mapped = jax.vmap(lambda p: one(p, None))(pred)
  else:
    mapped = jax.vmap(one)(pred, targ)
  np.testing.assert_allclose(mapped, eager, rtol=1e-5, atol=1e-6)


# --- hand calculations ---------------------------------------------------------------


def test_hand_calculated_values():
  # PyTorch MultiMarginLoss docs example: (0.3 + 0.4 + 0.6) / 4.
  np.testing.assert_allclose(
      L.multi_margin(jnp.array([[0.1, 0.2, 0.4, 0.8]]), jnp.array([3])), [0.325], rtol=1e-6)
  # Contrastive, margin 1: similar pair d=0.5 -> 0.25; dissimilar d=0.25 -> 0.75^2.
  np.testing.assert_allclose(
      L.contrastive(jnp.array([0.5, 0.25]), jnp.array([1.0, 0.0])), [0.25, 0.5625])
  # Huber vs smooth L1 at error 3, delta = beta = 2: 2 * (3 - 1) = 4 and 3 - 1 = 2.
  e = (jnp.array([[3.0]]), jnp.array([[0.0]]))
  np.testing.assert_allclose(L.huber(*e, delta=2.0), [4.0])
  np.testing.assert_allclose(L.smooth_l1(*e, beta=2.0), [2.0])
  # Keras CategoricalHinge: pos = 2, neg = max(0, 1.5, -1) = 1.5 -> 0.5.
  np.testing.assert_allclose(
      L.categorical_hinge(jnp.array([[2.0, 1.5, -1.0]]), jnp.array([[1.0, 0.0, 0.0]])), [0.5])
  # Dice, p = [1, 1, 0, 0], t = [1, 0, 0, 0], smooth 1: 1 - 3 / 4.
  np.testing.assert_allclose(
      L.dice(jnp.array([[1.0, 1.0, 0, 0]]), jnp.array([[1.0, 0, 0, 0]]), from_logits=False),
      [0.25])
  # Uniform logits over 4 classes: cross-entropy log 4.
  np.testing.assert_allclose(L.sparse_categorical_cross_entropy(
      jnp.zeros((1, 4)), jnp.array([2])), [np.log(4)], rtol=1e-6)


# --- properties ---------------------------------------------------------------------


def test_ignore_index_equals_slicing_and_valid_mask_weights():
  y = LABELS.copy()
  y[[1, 3]] = -100
  loss = L.sparse_categorical_cross_entropy(LOGITS, y, ignore_index=-100)
  keep = np.array([0, 2])
  np.testing.assert_allclose(loss[keep], L.sparse_categorical_cross_entropy(
      LOGITS[keep], y[keep]), rtol=1e-6)
  np.testing.assert_array_equal(loss[np.array([1, 3])], [0.0, 0.0])
  w = L.valid_mask(y, ignore_index=-100)
  np.testing.assert_array_equal(w, [1, 0, 1, 0])
  mean_valid = L.reduce(loss, weights=w, reduction="weighted_mean")
  np.testing.assert_allclose(mean_valid, np.mean(loss[keep]), rtol=1e-6)
  # Gradients of ignored examples are exactly zero.
  g = jax.grad(lambda x: L.sparse_categorical_cross_entropy(x, y, ignore_index=-100).sum())(
      jnp.asarray(LOGITS))
  np.testing.assert_array_equal(g[np.array([1, 3])], 0.0)


def test_ignore_index_dense_labels_average_valid_positions():
  y = SEQ_Y.copy()
  y[1, 2:] = -1
  loss = L.sparse_categorical_cross_entropy(SEQ_X, y, ignore_index=-1)
  np.testing.assert_allclose(
      loss[1], L.sparse_categorical_cross_entropy(SEQ_X[1:2, :2], y[1:2, :2])[0], rtol=1e-6)


def test_sequence_mask_equals_slicing():
  mask = SEQ_MASK
  loss = L.sequence_cross_entropy(SEQ_X, SEQ_Y, mask=mask)
  for i in range(B):
    n = int(mask[i].sum())
    if n == 0:
      assert loss[i] == 0.0
      continue
    sliced = L.sequence_cross_entropy(SEQ_X[i:i + 1, :n], SEQ_Y[i:i + 1, :n])
    np.testing.assert_allclose(loss[i], sliced[0], rtol=1e-6)
  # A float 0/1 mask behaves as the bool one.
  np.testing.assert_allclose(
      L.sequence_cross_entropy(SEQ_X, SEQ_Y, mask=mask.astype(np.float32)), loss)


@pytest.mark.parametrize("name,targets", [
    ("binary_cross_entropy", BIN_T), ("categorical_cross_entropy", ONEHOT),
    ("sparse_categorical_cross_entropy", LABELS), ("focal", ONEHOT),
    ("poly1_cross_entropy", ONEHOT)])
def test_label_smoothing_zero_equals_none(name, targets):
  x = BIN_X if name == "binary_cross_entropy" else LOGITS
  fn = L.get(name)
  np.testing.assert_array_equal(fn(x, targets, label_smoothing=0.0), fn(x, targets))


def test_sparse_smoothing_equals_categorical_smoothing_on_one_hot():
  np.testing.assert_allclose(
      L.sparse_categorical_cross_entropy(LOGITS, LABELS, label_smoothing=0.2),
      L.categorical_cross_entropy(LOGITS, ONEHOT, label_smoothing=0.2), rtol=1e-6)


def test_special_cases_reduce_to_cross_entropy_or_dice():
  ce = L.categorical_cross_entropy(LOGITS, ONEHOT)
  np.testing.assert_allclose(L.focal(LOGITS, ONEHOT, gamma=0.0, alpha=None), ce, rtol=1e-5)
  np.testing.assert_allclose(L.poly1_cross_entropy(LOGITS, ONEHOT, epsilon=0.0), ce, rtol=1e-6)
  np.testing.assert_allclose(L.kl_divergence(LOGITS, ONEHOT), ce, rtol=1e-6)
  np.testing.assert_allclose(L.sparse_categorical_cross_entropy(LOGITS, LABELS), ce, rtol=1e-6)
  # Tversky(0.5, 0.5, smooth s / 2) is Dice(smooth s): divide Dice's ratio by 2.
  np.testing.assert_allclose(L.tversky(MASK_X, MASK_T, smooth=0.5), L.dice(MASK_X, MASK_T),
                             rtol=1e-6)
  # Huber(delta) = delta * SmoothL1(beta=delta).
  np.testing.assert_allclose(L.huber(REG_P, REG_T, delta=0.7),
                             0.7 * L.smooth_l1(REG_P, REG_T, beta=0.7), rtol=1e-6)


def test_from_probabilities_matches_from_logits_away_from_the_clip():
  np.testing.assert_allclose(
      L.binary_cross_entropy(BIN_P, BIN_T, from_logits=False),
      L.binary_cross_entropy(BIN_X, BIN_T), rtol=1e-4)
  for name, t in [("categorical_cross_entropy", ONEHOT), ("kl_divergence", SOFT_T),
                  ("focal", ONEHOT), ("poly1_cross_entropy", ONEHOT)]:
    fn = L.get(name)
    np.testing.assert_allclose(fn(PROBS, t, from_logits=False), fn(LOGITS, t), rtol=1e-4)
  np.testing.assert_allclose(L.binary_focal(BIN_P, BIN_T, from_logits=False),
                             L.binary_focal(BIN_X, BIN_T), rtol=1e-4)


def test_hinge_converts_zero_one_labels():
  np.testing.assert_allclose(L.hinge(BIN_X, BIN_T), L.hinge(BIN_X, SIGNED_T))
  np.testing.assert_allclose(L.squared_hinge(BIN_X, BIN_T), L.squared_hinge(BIN_X, SIGNED_T))


# --- numerics -----------------------------------------------------------------------

BIG = 1e4
EXT_LOGITS = jnp.array([[BIG, -BIG, 0.0], [-BIG, BIG, BIG], [0.0, 0.0, -BIG]], jnp.float32)
EXT_LABELS = jnp.array([1, 1, 2], jnp.int32)
EXT_ONEHOT = jax.nn.one_hot(EXT_LABELS, 3)
EXT_PROBS = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 1.0, 0.0]], jnp.float32)
EXT_BIN_T = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], jnp.float32)

EXTREME_CASES = [
    ("binary_cross_entropy", EXT_LOGITS, EXT_BIN_T, {}),
    ("binary_cross_entropy", EXT_PROBS, EXT_BIN_T, dict(from_logits=False)),
    ("categorical_cross_entropy", EXT_LOGITS, EXT_ONEHOT, dict(label_smoothing=0.1)),
    ("categorical_cross_entropy", EXT_PROBS, EXT_ONEHOT, dict(from_logits=False)),
    ("sparse_categorical_cross_entropy", EXT_LOGITS, EXT_LABELS, dict(label_smoothing=0.1)),
    ("sparse_categorical_cross_entropy", EXT_LOGITS, EXT_LABELS, {}),
    ("sparse_categorical_cross_entropy", EXT_PROBS, EXT_LABELS, dict(from_logits=False)),
    ("kl_divergence", EXT_LOGITS, EXT_PROBS, {}),
    ("kl_divergence", EXT_PROBS, EXT_PROBS[::-1], dict(from_logits=False)),
    ("focal", EXT_LOGITS, EXT_ONEHOT, dict(gamma=0.5)),
    ("focal", EXT_PROBS, EXT_ONEHOT, dict(from_logits=False)),
    ("binary_focal", EXT_LOGITS, EXT_BIN_T, {}),
    ("binary_focal", EXT_PROBS, EXT_BIN_T, dict(from_logits=False, gamma=0.5)),
    ("poly1_cross_entropy", EXT_LOGITS, EXT_ONEHOT, {}),
    ("poly1_cross_entropy", EXT_PROBS, EXT_ONEHOT, dict(from_logits=False)),
    ("hinge", EXT_LOGITS, EXT_BIN_T, {}),
    ("squared_hinge", EXT_LOGITS, EXT_BIN_T, {}),
    ("categorical_hinge", EXT_LOGITS, EXT_ONEHOT, {}),
    ("multi_margin", EXT_LOGITS, EXT_LABELS, dict(p=2)),
    ("dice", EXT_LOGITS, EXT_BIN_T, {}),
    ("dice", EXT_PROBS, EXT_BIN_T, dict(from_logits=False, smooth=0.0)),
    ("tversky", EXT_LOGITS, EXT_ONEHOT, dict(activation="softmax")),
    ("dice_cross_entropy", EXT_LOGITS, EXT_ONEHOT, dict(activation="softmax")),
    ("dice_cross_entropy", EXT_PROBS, EXT_BIN_T, dict(from_logits=False)),
    ("log_cosh", EXT_LOGITS, jnp.zeros((3, 3)), {}),
    ("huber", EXT_LOGITS, jnp.zeros((3, 3)), {}),
    ("mean_absolute_error", EXT_PROBS, EXT_PROBS, {}),  # zero error: |x| at 0
    ("mean_squared_log_error", EXT_PROBS, EXT_PROBS, {}),
    ("poisson", EXT_PROBS, EXT_PROBS, {}),  # rate exactly 0
    ("cosine_similarity", jnp.zeros((3, 3)), EXT_PROBS, {}),  # zero vector
    ("contrastive", EXT_PROBS, EXT_BIN_T, {}),
    ("gan_generator", EXT_LOGITS, None, {}),
]


@pytest.mark.parametrize("name,pred,targ,kw", EXTREME_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(EXTREME_CASES)])
def test_finite_values_and_gradients_at_extremes(name, pred, targ, kw):
  fn = L.get(name)
  value, grad = jax.value_and_grad(lambda p: fn(p, targ, **kw).sum())(pred)
  assert np.isfinite(value), (name, value)
  assert np.all(np.isfinite(grad)), (name, grad)
  if targ is not None and jnp.issubdtype(targ.dtype, jnp.floating):
    grad_t = jax.grad(lambda t: fn(pred, t, **kw).sum())(targ)
    assert np.all(np.isfinite(grad_t)), (name, "targets", grad_t)


def test_finite_at_extremes_for_tuple_inputs():
  z = jnp.zeros((2, 3))
  x = jnp.ones((2, 3))
  # Identical triplet embeddings (distance 0, with and without eps).
  for eps in (0.0, 1e-6):
    for p in (1, 2):
      g = jax.grad(lambda a: L.triplet_margin((a, a, a), eps=eps, p=p).sum())(x)
      assert np.all(np.isfinite(g))
  # Zero variance (clamped) and extreme discriminator logits.
  g = jax.grad(lambda v: L.gaussian_nll((z, v), x).sum())(z)
  assert np.all(np.isfinite(g))
  g = jax.grad(lambda r: L.gan_discriminator((r, -r)).sum())(EXT_LOGITS)
  assert np.all(np.isfinite(g))


def test_kl_zero_targets_contribute_zero():
  t = jnp.array([[1.0, 0.0, 0.0]])
  np.testing.assert_allclose(L.kl_divergence(jnp.array([[0.0, 5.0, -5.0]]), t),
                             -jax.nn.log_softmax(jnp.array([0.0, 5.0, -5.0]))[0:1], rtol=1e-6)


SMOOTH_GRAD_CASES = ["mse", "huber", "smooth_l1", "log_cosh", "bce", "cce", "sparse", "kl",
                     "focal", "binary_focal", "poly1", "dice", "tversky", "dice_ce",
                     "sequence_ce", "gan_g", "cosine", "gaussian_nll", "poisson"]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SMOOTH_GRAD_CASES],
                         ids=lambda c: c.id)
def test_gradients_match_finite_differences(case):
  pred, targ = case.args
  # Keep the inputs away from kinks (huber/smooth_l1 at |e| = delta), in float32.
  f = lambda p: _call(case, p, targ).sum()
  check_grads(f, (jax.tree.map(jnp.asarray, pred),), order=1, modes=("rev",),
              atol=2e-2, rtol=2e-2, eps=1e-3)


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mean_squared_error", "binary_cross_entropy",
                                  "categorical_cross_entropy", "hinge", "dice", "contrastive"])
def test_shape_mismatch_names_both_shapes(name):
  with pytest.raises(ValueError, match=r"\(4, 1\).*\(4,\)"):
    L.get(name)(jnp.zeros((4, 1)), jnp.zeros((4,)))


def test_dtype_and_label_errors():
  with pytest.raises(TypeError, match="int32"):
    L.mean_squared_error(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)))
  with pytest.raises(TypeError, match="float32"):
    L.sparse_categorical_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2,)))
  with pytest.raises(ValueError, match=r"\(2, 1\).*\(2, 3\)"):
    L.sparse_categorical_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 1), jnp.int32))
  with pytest.raises(ValueError, match=r"\(3,\)"):
    L.focal(LOGITS, ONEHOT, alpha=(1.0, 2.0, 3.0))
  with pytest.raises(ValueError, match="label_smoothing=1.5"):
    L.categorical_cross_entropy(LOGITS, ONEHOT, label_smoothing=1.5)
  with pytest.raises(ValueError, match="activation='relu'"):
    L.dice(MASK_X, MASK_T, activation="relu")
  with pytest.raises(ValueError, match=r"mask shape \(4, 5\)"):
    L.sequence_cross_entropy(SEQ_X, SEQ_Y, mask=jnp.ones((4, 5)))
  with pytest.raises(TypeError, match="triple"):
    L.triplet_margin(EMB[:2])
  with pytest.raises(ValueError, match=r"variance shape \(4, 5\)"):
    L.gaussian_nll((POS_P, jnp.ones((4, 5))), POS_T)


def test_errors_raise_under_jit_at_trace_time():
  with pytest.raises(ValueError, match=r"\(3, 2\).*\(3, 1\)"):
    jax.jit(L.mean_absolute_error)(jnp.zeros((3, 2)), jnp.zeros((3, 1)))


# --- registry and reduce -------------------------------------------------------------

CANONICAL = [
    "mean_squared_error", "mean_absolute_error", "huber", "smooth_l1", "log_cosh",
    "mean_squared_log_error", "mean_absolute_percentage_error", "poisson", "gaussian_nll",
    "cosine_similarity", "binary_cross_entropy", "categorical_cross_entropy",
    "sparse_categorical_cross_entropy", "kl_divergence", "focal", "binary_focal",
    "poly1_cross_entropy", "hinge", "squared_hinge", "categorical_hinge", "multi_margin",
    "hinge_embedding", "contrastive", "triplet_margin", "dice", "tversky",
    "dice_cross_entropy", "sequence_cross_entropy", "gan_discriminator", "gan_generator",
    # tests/test_losses_robust.py
    "generalized_cross_entropy", "reverse_cross_entropy", "symmetric_cross_entropy",
    "normalized_cross_entropy", "nce_rce", "bootstrapped_cross_entropy",
    "logit_adjusted_cross_entropy", "ldam", "focal_sample_dependent", "brier",
    # the edge-of-stability loss (every classification loss trains, below)
    "square_loss",
    # tests/test_scene_losses.py
    "iou", "giou",
    # tests/test_metric_learning.py and tests/test_generation.py
    "supervised_contrastive", "gan_hinge_discriminator", "gan_hinge_generator",
    "lsgan_discriminator", "lsgan_generator", "r1_penalty"]


def test_names_and_aliases():
  assert L.names() == sorted(CANONICAL)
  for name in CANONICAL:
    assert L.get(name).__name__ == name
  assert L.get("mse") is L.mean_squared_error
  assert L.get("mae") is L.mean_absolute_error
  assert L.get("bce") is L.binary_cross_entropy
  assert L.get("cce") is L.categorical_cross_entropy
  assert L.get("sparse_cce") is L.sparse_categorical_cross_entropy
  assert L.get("cross_entropy") is L.sparse_categorical_cross_entropy
  assert L.get("Smooth-L1") is L.smooth_l1
  for alias, target in L.ALIASES.items():
    assert target in CANONICAL, alias


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"Unknown loss 'msee'.*mean_squared_error"):
    L.get("msee")


def test_reduce():
  l = jnp.array([1.0, 2.0, 3.0, 6.0])
  w = jnp.array([1.0, 0.0, 1.0, 2.0])
  assert L.reduce(l) == 3.0
  assert L.reduce(l, reduction="sum") == 12.0
  np.testing.assert_array_equal(L.reduce(l, reduction="none"), l)
  np.testing.assert_array_equal(L.reduce(l, weights=w, reduction="none"), l * w)
  assert L.reduce(l, weights=w, reduction="sum") == 16.0
  assert L.reduce(l, weights=w, reduction="mean") == 4.0
  assert L.reduce(l, weights=w, reduction="weighted_mean") == 4.0  # (1 + 3 + 12) / 4
  assert L.reduce(l, reduction="weighted_mean") == 3.0
  # All weights zero: 0, not NaN, and a finite gradient.
  z = jnp.zeros(4)
  assert L.reduce(l, weights=z, reduction="weighted_mean") == 0.0
  g = jax.grad(lambda x: L.reduce(x, weights=z, reduction="weighted_mean"))(l)
  assert np.all(np.isfinite(g))
  with pytest.raises(ValueError, match=r"reduction='avg'.*weighted_mean"):
    L.reduce(l, reduction="avg")
  with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
    L.reduce(l, weights=jnp.ones(3))


# --- training-loop adapter -----------------------------------------------------------


def _train_steps(fn, num_classes, steps=15, lr=0.5):
  """Full-batch SGD of a linear classifier on separable toy data; returns losses."""
  rng = np.random.default_rng(1)
  n, d = 64, 6
  centers = rng.normal(size=(num_classes, d)) * 3
  y = rng.integers(0, num_classes, size=n).astype(np.int32)
  x = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
  params = (jnp.zeros((d, num_classes)), jnp.zeros((num_classes,)))
  chex.clear_trace_counter()  # `step` below is a new function per call

  def loss(params):
    w, b = params
    return L.reduce(fn(x @ w + b, y))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params):
    value, g = jax.value_and_grad(loss)(params)
    return jax.tree.map(lambda p, gi: p - lr * gi, params, g), value

  values = []
  for _ in range(steps):
    params, v = step(params)
    values.append(float(v))
  values.append(float(loss(params)))
  return values


@pytest.mark.parametrize("name", L.classification_names())
def test_every_classification_loss_trains(name):
  binary = name in ("binary_cross_entropy", "binary_focal", "hinge", "squared_hinge")
  num_classes = 2 if binary else 3
  # Per-class statistics of the training split (a task fills them in from the data).
  stats = {"ldam": {"class_counts": (30, 20, 14)},
           "logit_adjusted_cross_entropy": {"class_priors": (0.5, 0.3, 0.2)}}
  fn = L.for_classification(name, num_classes=num_classes, **stats.get(name, {}))
  # The square loss on raw outputs has the curvature of least squares, lambda_max(x^T x / n)
  # ~ 60 on this data: gradient descent is stable only below lr = 2 / 60.
  values = _train_steps(fn, num_classes, lr=0.02 if name == "square_loss" else 0.5)
  assert all(np.isfinite(values)), values
  assert values[-1] < 0.8 * values[0], (name, values[0], values[-1])


def test_for_classification_matches_direct_calls():
  y = jnp.asarray(LABELS)
  np.testing.assert_allclose(
      L.for_classification("cce", num_classes=C, label_smoothing=0.1)(LOGITS, y),
      L.categorical_cross_entropy(LOGITS, ONEHOT, label_smoothing=0.1))
  np.testing.assert_allclose(
      L.for_classification("mse", num_classes=C)(LOGITS, y),
      np_mean1((_softmax(LOGITS) - ONEHOT) ** 2), rtol=1e-5)
  # Binary on a two-logit head: BCE on z = l1 - l0 is the 2-class softmax CE.
  two = LOGITS[:, :2]
  yb = jnp.array([0, 1, 1, 0])
  np.testing.assert_allclose(
      L.for_classification("bce", num_classes=2)(two, yb),
      L.sparse_categorical_cross_entropy(two, yb), rtol=1e-5)
  # A one-logit head is used as is.
  np.testing.assert_allclose(
      L.for_classification("hinge", num_classes=2)(LOGITS[:, :1], yb),
      np.maximum(1 - (2 * np.asarray(yb) - 1) * LOGITS[:, 0], 0), rtol=1e-6)


def test_for_classification_none_options_are_dropped():
  fn = L.for_classification("focal", num_classes=C, gamma=None, alpha=None)
  np.testing.assert_allclose(fn(LOGITS, jnp.asarray(LABELS)), L.focal(LOGITS, ONEHOT))
  # None also drops options that the loss does not have (unset config placeholders).
  L.for_classification("hinge_loss", num_classes=2, label_smoothing=None)


def test_for_classification_errors():
  with pytest.raises(ValueError, match=r"loss.name='binary_cross_entropy' needs 2 classes, "
                                       r"dataset has 10; use one of \[.*sparse_categorical"):
    L.for_classification("binary_cross_entropy", num_classes=10)
  for name in ("contrastive", "triplet_margin", "gaussian_nll", "sequence_cross_entropy",
               "gan_generator", "hinge_embedding", "mean_absolute_percentage_error"):
    with pytest.raises(ValueError, match=r"cannot train a classifier.*use one of \[.*focal"):
      L.for_classification(name, num_classes=10)
  with pytest.raises(ValueError, match=r"loss.gamma is not an option of "
                                       r"sparse_categorical_cross_entropy; accepted: "
                                       r"\[class_weights, ignore_index, label_smoothing\]"):
    L.for_classification("cross_entropy", num_classes=10, gamma=2.0)
  with pytest.raises(ValueError, match="loss.from_logits is not an option"):
    L.for_classification("cce", num_classes=10, from_logits=False)
  with pytest.raises(ValueError, match="Unknown loss 'nope'"):
    L.for_classification("nope", num_classes=10)
  with pytest.raises(ValueError, match="label_smoothing=2"):
    L.for_classification("cce", num_classes=10, label_smoothing=2)
  with pytest.raises(ValueError, match=r"class_weights must .* shape \(10,\)"):
    L.for_classification("cross_entropy", num_classes=10, class_weights=[1.0, 2.0])
  fn = L.for_classification("cce", num_classes=10)
  with pytest.raises(ValueError, match=r"\[batch, 10\].*\(4, 5\)"):
    fn(LOGITS, jnp.asarray(LABELS))


def test_classification_names():
  names = L.classification_names()
  assert names == sorted(names)
  assert {"sparse_categorical_cross_entropy", "categorical_cross_entropy", "focal",
          "poly1_cross_entropy", "kl_divergence", "mean_squared_error", "categorical_hinge",
          "multi_margin", "binary_cross_entropy", "hinge"} <= set(names)
  assert not {"contrastive", "triplet_margin", "gaussian_nll", "gan_generator"} & set(names)
  assert set(names) <= set(L.names())
