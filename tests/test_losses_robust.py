"""Losses for noisy labels, long-tailed classes and calibration.

References, named per test: float64 numpy re-derivations of each paper's formula, and the
authors' PyTorch code transcribed line by line into torch 2.13 (reverse / symmetric /
normalized cross-entropy: Wang et al.'s and Ma et al.'s ``SCELoss``, ``NCELoss``,
``RCELoss``; LDAM: Cao et al.'s ``LDAMLoss``; FLSD-53: Mukhoti et al.'s
``FocalLossAdaptive``). Class-balanced weights are checked by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.losses as L

B, C = 7, 5
rng = np.random.default_rng(12)
LOGITS = (rng.normal(size=(B, C)) * 2.5).astype(np.float32)
LABELS = rng.integers(0, C, size=B).astype(np.int32)
COUNTS = (400, 240, 143, 51, 4)


def np_softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def onehot(y, c=C):
  return np.eye(c)[y]


P, T = np_softmax(LOGITS), onehot(LABELS)
P_Y = P[np.arange(B), LABELS]


def check(name, expected, rtol=1e-5, **options):
  # Jitted: one compiled program per call instead of op-by-op dispatch.
  fn = jax.jit(lambda x, y: L.get(name)(x, y, **options))
  np.testing.assert_allclose(fn(LOGITS, LABELS), expected, rtol=rtol, atol=1e-6)


def test_generalized_cross_entropy_formula():
  """Zhang & Sabuncu 2018, eq. 6: (1 - p_y^q) / q."""
  check("generalized_cross_entropy", (1 - P_Y ** 0.7) / 0.7)
  check("generalized_cross_entropy", 1 - P_Y, q=1.0)
  # q -> 0 is cross-entropy.
  check("generalized_cross_entropy", -np.log(P_Y), rtol=1e-3, q=1e-4)


def test_bootstrapping_formula():
  """Reed et al. 2015: -sum (beta t + (1 - beta) s) log p, s = p (soft) or onehot(argmax)."""
  log_p = np.log(P)
  check("bootstrapped_cross_entropy", -np.sum((0.95 * T + 0.05 * P) * log_p, -1))
  hard = onehot(P.argmax(-1))
  check("bootstrapped_cross_entropy", -np.sum((0.8 * T + 0.2 * hard) * log_p, -1), mode="hard")
  # The target is a constant: the soft gradient is that of CE on the fixed mixed target.
  target = jnp.asarray(0.95 * T + 0.05 * P, jnp.float32)
  g = jax.jit(jax.grad(lambda x: L.bootstrapped_cross_entropy(x, LABELS).sum()))(LOGITS)
  np.testing.assert_allclose(g, P - np.asarray(target), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match=r"mode='medium'.*\['hard', 'soft'\]"):
    L.bootstrapped_cross_entropy(LOGITS, LABELS, mode="medium")


def test_logit_adjusted_formula():
  """Menon et al. 2021, eq. 10: CE(z + tau log pi)."""
  pi = np.asarray(COUNTS, np.float64) / sum(COUNTS)
  adjusted = np_softmax(LOGITS + 1.5 * np.log(pi))
  check("logit_adjusted_cross_entropy", -np.log(adjusted[np.arange(B), LABELS]),
        class_priors=COUNTS, tau=1.5)
  with pytest.raises(ValueError, match="class_priors is required"):
    L.logit_adjusted_cross_entropy(LOGITS, LABELS)


def test_brier_and_class_balanced_weights_formulas():
  check("brier", np.sum((P - T) ** 2, -1))
  # By hand: beta 0.5, counts (1, 2): w = 0.5/0.5 = 1 and 0.5/0.75 = 2/3; sum to 2.
  np.testing.assert_allclose(L.class_balanced_weights([1, 2], beta=0.5), [1.2, 0.8])
  np.testing.assert_allclose(L.class_balanced_weights([5, 50], beta=0.0), [1.0, 1.0])
  with pytest.raises(ValueError, match="beta=1.0"):
    L.class_balanced_weights([1, 2], beta=1.0)


torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(x):
  return torch.from_numpy(np.asarray(x))


def official_sce_rce_nce(pred, labels, num_classes, alpha, beta):
  """Wang et al.'s SCELoss.forward and Ma et al.'s NCE / RCE forward, per example."""
  ce = F.cross_entropy(pred, labels, reduction="none")
  p = F.softmax(pred, dim=1)
  p = torch.clamp(p, min=1e-7, max=1.0)
  label_one_hot = F.one_hot(labels, num_classes).float()
  label_one_hot = torch.clamp(label_one_hot, min=1e-4, max=1.0)
  rce = -1 * torch.sum(p * torch.log(label_one_hot), dim=1)
  log_p = F.log_softmax(pred, dim=1)
  nce = -1 * torch.sum(F.one_hot(labels, num_classes).float() * log_p, dim=1) / (
      -log_p.sum(dim=1))
  return alpha * ce + beta * rce, rce, nce


def test_reverse_symmetric_normalized_match_the_authors_code():
  sce, rce, nce = official_sce_rce_nce(_t(LOGITS), _t(LABELS).long(), C, 0.1, 1.0)
  check("reverse_cross_entropy", rce.numpy())
  check("symmetric_cross_entropy", sce.numpy())
  check("normalized_cross_entropy", nce.numpy())
  check("nce_rce", (2.0 * nce + 0.5 * rce).numpy(), alpha=2.0, beta=0.5)
  # The code's A = ln(1e-4): RCE = 9.21 (1 - p_y) up to the 1e-7 clip.
  np.testing.assert_allclose(rce.numpy(), -np.log(1e-4) * (1 - P_Y), rtol=1e-4)


def official_ldam(x, target, cls_num_list, max_m, s):
  """Cao et al.'s LDAMLoss.__init__ and forward (weight=None), per example."""
  m_list = 1.0 / np.sqrt(np.sqrt(cls_num_list))
  m_list = m_list * (max_m / np.max(m_list))
  m_list = torch.FloatTensor(m_list)
  index = torch.zeros_like(x, dtype=torch.uint8)
  index.scatter_(1, target.data.view(-1, 1), 1)
  index_float = index.type(torch.FloatTensor)
  batch_m = torch.matmul(m_list[None, :], index_float.transpose(0, 1))
  batch_m = batch_m.view((-1, 1))
  x_m = x - batch_m
  output = torch.where(index.bool(), x_m, x)
  return F.cross_entropy(s * output, target, reduction="none")


def test_ldam_matches_the_authors_code():
  for max_m, s in ((0.5, 30.0), (0.3, 1.0)):
    expected = official_ldam(_t(LOGITS), _t(LABELS).long(), COUNTS, max_m, s)
    check("ldam", expected.numpy(), rtol=1e-4, class_counts=COUNTS, max_margin=max_m, scale=s)


def official_flsd53(logits, target):
  """Mukhoti et al.'s FocalLossAdaptive(gamma=3).forward (size_average=False), per example."""
  gamma_dic = {0.2: 5.0, 0.5: 3.0}
  logpt = F.log_softmax(logits, dim=1).gather(1, target.view(-1, 1)).view(-1)
  pt = logpt.exp()
  gammas = []
  for value in pt.tolist():
    if value >= 0.5:
      gammas.append(3.0)
      continue
    for key in sorted(gamma_dic):
      if value < key:
        gammas.append(gamma_dic[key])
        break
  return -1 * (1 - pt) ** torch.tensor(gammas) * logpt


def test_flsd53_matches_the_authors_code():
  x = torch.tensor(LOGITS, requires_grad=True)
  expected = official_flsd53(x, _t(LABELS).long())
  check("focal_sample_dependent", expected.detach().numpy(), rtol=1e-4)
  assert (P_Y < 0.2).any() and (P_Y >= 0.2).any()  # both branches are exercised
  expected.sum().backward()
  g = jax.jit(jax.grad(lambda z: L.focal_sample_dependent(z, LABELS).sum()))(LOGITS)
  np.testing.assert_allclose(g, x.grad.numpy(), rtol=1e-4, atol=1e-6)


BIG = 1e4
EXTREME = jnp.array([[BIG, -BIG, 0.0, 0.0, 0.0], [-BIG, BIG, BIG, 0.0, -BIG],
                     [0.0, 0.0, -BIG, 0.0, 0.0]], jnp.float32)
EXTREME_LABELS = jnp.array([1, 1, 2], jnp.int32)
NEW_LOSSES = {
    "generalized_cross_entropy": {}, "reverse_cross_entropy": {},
    "symmetric_cross_entropy": {}, "normalized_cross_entropy": {}, "nce_rce": {},
    "bootstrapped_cross_entropy": {}, "logit_adjusted_cross_entropy": {"class_priors": COUNTS},
    "ldam": {"class_counts": COUNTS}, "focal_sample_dependent": {}, "brier": {}}


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_finite_values_and_gradients_at_extreme_logits(name):
  fn = L.get(name)
  value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(
      lambda x: fn(x, EXTREME_LABELS, **NEW_LOSSES[name]).sum())))
  values, grads = value_and_grad(jnp.stack([EXTREME, -EXTREME]))
  assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads)), (name, values, grads)
  # (tests/test_losses.py trains every classification loss through the adapter.)
