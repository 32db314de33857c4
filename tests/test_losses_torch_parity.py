"""Live parity of cnnjax.losses with PyTorch on random inputs.

Each cnnjax loss returns ``[batch]``; PyTorch's ``reduction="none"`` output is
averaged (or summed, where the loss sums over classes) over the non-batch axes
to compare. The sigmoid focal loss is written in torch from torchvision's
documented definition (torchvision itself is not a dependency). Skipped when
torch is not installed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.losses as L

torch = pytest.importorskip("torch")
F = torch.nn.functional

B, C = 6, 5
RTOL, ATOL = 1e-5, 1e-6

# Every cnnjax loss with a PyTorch counterpart, and that counterpart.
TORCH_COUNTERPARTS = {
    "mean_squared_error": "F.mse_loss",
    "mean_absolute_error": "F.l1_loss",
    "huber": "F.huber_loss",
    "smooth_l1": "F.smooth_l1_loss",
    "poisson": "F.poisson_nll_loss",
    "gaussian_nll": "F.gaussian_nll_loss",
    "cosine_similarity": "-F.cosine_similarity",
    "binary_cross_entropy": "F.binary_cross_entropy_with_logits / F.binary_cross_entropy",
    "categorical_cross_entropy": "F.cross_entropy (probability targets)",
    "sparse_categorical_cross_entropy": "F.cross_entropy (class indices)",
    "kl_divergence": "F.kl_div",
    "binary_focal": "torchvision.ops.sigmoid_focal_loss (its documented formula)",
    "multi_margin": "F.multi_margin_loss",
    "hinge_embedding": "F.hinge_embedding_loss",
    "triplet_margin": "F.triplet_margin_loss",
    "sequence_cross_entropy": "F.cross_entropy over time steps",
    "gan_discriminator": "F.binary_cross_entropy_with_logits (real=1, fake=0)",
    "gan_generator": "F.binary_cross_entropy_with_logits (fake=1)",
}


def rand(*shape, seed, scale=1.0, low=None):
  r = np.random.default_rng(seed)
  if low is not None:
    return r.uniform(low, low + scale, size=shape).astype(np.float32)
  return (r.normal(size=shape) * scale).astype(np.float32)


def t(x):
  return torch.from_numpy(np.asarray(x))


def per_example(x):
  """torch [B, ...] -> numpy [B], the mean over non-batch axes."""
  x = x.detach().numpy()
  return x.reshape(x.shape[0], -1).mean(1) if x.ndim > 1 else x


def close(ours, theirs, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=rtol, atol=atol)


P = rand(B, 4, 3, seed=0, scale=2)
Y = rand(B, 4, 3, seed=1, scale=2)
LOGITS = rand(B, C, seed=2, scale=3)
LABELS = np.random.default_rng(3).integers(0, C, size=B).astype(np.int64)
BIN = np.random.default_rng(4).integers(0, 2, size=(B, 7)).astype(np.float32)
BIN_X = rand(B, 7, seed=5, scale=3)


def test_counterpart_table_covers_the_tests():
  # The count reported in the README, "Losses".
  assert len(TORCH_COUNTERPARTS) == 18
  assert set(TORCH_COUNTERPARTS) <= set(L.names())


@pytest.mark.parametrize("ours,theirs", [
    (L.mean_squared_error, F.mse_loss), (L.mean_absolute_error, F.l1_loss)])
def test_mse_mae(ours, theirs):
  close(ours(P, Y), per_example(theirs(t(P), t(Y), reduction="none")))
  # reduce(mean) is torch's reduction="mean".
  close(L.reduce(ours(P, Y)), theirs(t(P), t(Y)).item())


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.5])
def test_huber_and_smooth_l1(delta):
  close(L.huber(P, Y, delta=delta),
        per_example(F.huber_loss(t(P), t(Y), reduction="none", delta=delta)))
  close(L.smooth_l1(P, Y, beta=delta),
        per_example(F.smooth_l1_loss(t(P), t(Y), reduction="none", beta=delta)))
  close(L.smooth_l1(P, Y, beta=0.0),
        per_example(F.smooth_l1_loss(t(P), t(Y), reduction="none", beta=0.0)))


def test_poisson():
  rate = rand(B, 7, seed=6, scale=3, low=0.05)
  counts = np.random.default_rng(7).poisson(2.0, size=(B, 7)).astype(np.float32)
  close(L.poisson(rate, counts, eps=1e-8),
        per_example(F.poisson_nll_loss(t(rate), t(counts), log_input=False, eps=1e-8,
                                       reduction="none")))
  close(L.poisson(P, Y ** 2, log_input=True),
        per_example(F.poisson_nll_loss(t(P), t(Y ** 2), log_input=True, reduction="none")))


@pytest.mark.parametrize("full", [False, True])
def test_gaussian_nll(full):
  var = rand(B, 4, 3, seed=8, scale=2, low=0.0)
  var[0, 0, 0] = 0.0  # exercises the eps clamp
  close(L.gaussian_nll((P, var), Y, full=full),
        per_example(F.gaussian_nll_loss(t(P), t(Y), t(var), full=full, reduction="none")))
  # Variance with a trailing singleton axis broadcasts, as in torch.
  var1 = var[..., :1]
  close(L.gaussian_nll((P, var1), Y),
        per_example(F.gaussian_nll_loss(t(P), t(Y), t(var1), reduction="none")))
  # Gradients match too, including through the (straight-through) clamp.
  pm, vm = t(P).requires_grad_(), t(var).requires_grad_()
  F.gaussian_nll_loss(pm, t(Y), vm, reduction="sum").backward()
  gm, gv = jax.grad(lambda m, v: (L.gaussian_nll((m, v), Y) * 12).sum(), (0, 1))(P, var)
  close(gm, pm.grad.numpy(), rtol=1e-4)
  close(gv, vm.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_cosine_similarity():
  close(L.cosine_similarity(P, Y), per_example(-F.cosine_similarity(t(P), t(Y), dim=-1)))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_binary_cross_entropy(smoothing):
  target = BIN * (1 - smoothing) + 0.5 * smoothing  # Keras' smoothing, applied for torch
  close(L.binary_cross_entropy(BIN_X, BIN, label_smoothing=smoothing),
        per_example(F.binary_cross_entropy_with_logits(t(BIN_X), t(target), reduction="none")))
  probs = 1 / (1 + np.exp(-BIN_X))
  close(L.binary_cross_entropy(probs, BIN, from_logits=False, label_smoothing=smoothing),
        per_example(F.binary_cross_entropy(t(probs), t(target), reduction="none")), rtol=1e-4)


@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_categorical_cross_entropy(smoothing):
  soft = np.exp(LOGITS[::-1]) / np.exp(LOGITS[::-1]).sum(-1, keepdims=True)
  soft = soft.astype(np.float32)
  close(L.categorical_cross_entropy(LOGITS, soft, label_smoothing=smoothing),
        F.cross_entropy(t(LOGITS), t(soft), reduction="none",
                        label_smoothing=smoothing).numpy())
  # Dense [B, H, W, C] logits: torch wants classes on axis 1.
  x = rand(B, 3, 2, C, seed=9, scale=2)
  onehot = np.eye(C, dtype=np.float32)[np.random.default_rng(10).integers(0, C, size=(B, 3, 2))]
  theirs = F.cross_entropy(t(x).permute(0, 3, 1, 2), t(onehot).permute(0, 3, 1, 2),
                           reduction="none", label_smoothing=smoothing)
  close(L.categorical_cross_entropy(x, onehot, label_smoothing=smoothing), per_example(theirs))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_sparse_categorical_cross_entropy(smoothing):
  close(L.sparse_categorical_cross_entropy(LOGITS, LABELS, label_smoothing=smoothing),
        F.cross_entropy(t(LOGITS), t(LABELS), reduction="none",
                        label_smoothing=smoothing).numpy())


def test_sparse_cross_entropy_weights_and_ignore_index():
  w = np.array([0.5, 1.0, 2.0, 1.5, 3.0], np.float32)
  y = LABELS.copy()
  y[[1, 4]] = -100
  ours = L.sparse_categorical_cross_entropy(LOGITS, y, class_weights=w, ignore_index=-100)
  close(ours, F.cross_entropy(t(LOGITS), t(y), weight=t(w), ignore_index=-100,
                              reduction="none").numpy())
  # torch's weighted mean: sum(w_y l) / sum(w_y) over non-ignored examples.
  # Computed without class_weights, then weighted by w_y in the reduction.
  weights = L.valid_mask(y, ignore_index=-100) * w[np.where(y >= 0, y, 0)]
  plain = L.sparse_categorical_cross_entropy(LOGITS, y, ignore_index=-100)
  close(L.reduce(plain, weights=weights, reduction="weighted_mean"),
        F.cross_entropy(t(LOGITS), t(y), weight=t(w), ignore_index=-100).item())
  # Unweighted: mean over valid examples.
  close(L.reduce(plain, weights=L.valid_mask(y, ignore_index=-100), reduction="weighted_mean"),
        F.cross_entropy(t(LOGITS), t(y), ignore_index=-100).item())


def test_kl_divergence():
  target = np.exp(LOGITS[::-1]) / np.exp(LOGITS[::-1]).sum(-1, keepdims=True)
  target = target.astype(np.float32)
  target[0] = np.eye(C, dtype=np.float32)[2]  # zero targets
  log_q = F.log_softmax(t(LOGITS), dim=-1)
  theirs = F.kl_div(log_q, t(target), reduction="none").sum(-1)
  close(L.kl_divergence(LOGITS, target), theirs.numpy())
  # torch's reduction="batchmean" is reduce(mean) of the per-example sums.
  close(L.reduce(L.kl_divergence(LOGITS, target)),
        F.kl_div(log_q, t(target), reduction="batchmean").item())


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 1.0), (0.6, 0.0)])
def test_binary_focal(alpha, gamma):
  # torchvision.ops.sigmoid_focal_loss, as documented:
  # p = sigmoid(x); ce = BCEWithLogits(x, t); p_t = p t + (1 - p)(1 - t);
  # loss = ce (1 - p_t)^gamma; if alpha >= 0: loss *= alpha t + (1 - alpha)(1 - t).
  x, tg = t(BIN_X), t(BIN)
  p = torch.sigmoid(x)
  ce = F.binary_cross_entropy_with_logits(x, tg, reduction="none")
  p_t = p * tg + (1 - p) * (1 - tg)
  loss = ce * ((1 - p_t) ** gamma)
  if alpha >= 0:
    loss = (alpha * tg + (1 - alpha) * (1 - tg)) * loss
  close(L.binary_focal(BIN_X, BIN, alpha=alpha, gamma=gamma), per_example(loss))


@pytest.mark.parametrize("p,margin,weighted", [(1, 1.0, False), (2, 0.7, True)])
def test_multi_margin(p, margin, weighted):
  w = np.array([0.5, 1.0, 2.0, 1.5, 3.0], np.float32) if weighted else None
  theirs = F.multi_margin_loss(t(LOGITS), t(LABELS), p=p, margin=margin,
                               weight=None if w is None else t(w), reduction="none")
  close(L.multi_margin(LOGITS, LABELS, p=p, margin=margin, class_weights=w), theirs.numpy())


@pytest.mark.parametrize("margin", [1.0, 2.0])
def test_hinge_embedding(margin):
  d = np.abs(P)
  sign = np.where(Y > 0, 1.0, -1.0).astype(np.float32)
  close(L.hinge_embedding(d, sign, margin=margin),
        per_example(F.hinge_embedding_loss(t(d), t(sign), margin=margin, reduction="none")))


@pytest.mark.parametrize("p,swap", [(2, False), (1, True), (3, False)])
def test_triplet_margin(p, swap):
  a, pos, neg = (rand(B, 8, seed=s) for s in (11, 12, 13))
  theirs = F.triplet_margin_loss(t(a), t(pos), t(neg), margin=1.0, p=p, eps=1e-6, swap=swap,
                                 reduction="none")
  close(L.triplet_margin((a, pos, neg), p=p, swap=swap), theirs.numpy(), rtol=1e-5, atol=1e-5)


def test_sequence_cross_entropy():
  x = rand(B, 7, C, seed=14, scale=2)
  y = np.random.default_rng(15).integers(0, C, size=(B, 7)).astype(np.int64)
  lengths = np.array([7, 3, 1, 5, 7, 2])
  mask = np.arange(7)[None] < lengths[:, None]
  padded = np.where(mask, y, -100)
  steps = F.cross_entropy(t(x).permute(0, 2, 1), t(padded), ignore_index=-100,
                          reduction="none").numpy()
  close(L.sequence_cross_entropy(x, y, mask=mask), steps.sum(1) / lengths)


def test_gan_losses():
  real, fake = rand(B, 3, 3, seed=16, scale=4), rand(B, 3, 3, seed=17, scale=4)
  bce = lambda x, v: F.binary_cross_entropy_with_logits(
      t(x), torch.full(x.shape, v), reduction="none")
  close(L.gan_discriminator((real, fake)), per_example(bce(real, 1.0) + bce(fake, 0.0)))
  close(L.gan_discriminator((real, fake), label_smoothing=0.1),
        per_example(bce(real, 0.9) + bce(fake, 0.0)))
  close(L.gan_generator(fake), per_example(bce(fake, 1.0)))


def test_gradients_match_torch_for_cross_entropy_at_large_logits():
  x = LOGITS * 1000.0
  xt = t(x).requires_grad_()
  F.cross_entropy(xt, t(LABELS), label_smoothing=0.1, reduction="sum").backward()
  g = jax.grad(lambda z: L.sparse_categorical_cross_entropy(
      z, LABELS, label_smoothing=0.1).sum())(jnp.asarray(x))
  close(g, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
  assert math.isfinite(float(jnp.sum(g)))
