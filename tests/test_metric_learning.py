"""Metric learning: mining, the supervised contrastive loss, retrieval metrics, the paired
pipeline and a short end-to-end run."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import config as config_lib
from cnnjax import losses as L
from cnnjax import retrieval
from cnnjax.losses import mining
from cnnjax.tasks import metric_learning
from cnnjax.training import loop
from experiments.configs import metric_learning as ml_config

RNG = np.random.default_rng(0)
EMB = RNG.normal(size=(12, 3)).astype(np.float32)
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 0, 2], np.int32)
VALID = np.array([1] * 9 + [0, 1, 1], bool)  # row 9 is padding
PICK = RNG.random((12, 2)).astype(np.float32)


def _brute_force(mode):
  """The mining rules of cnnjax.losses.mining, by a loop over rows and candidates."""
  d = np.sqrt(((EMB[:, None].astype(np.float64) - EMB[None]) ** 2).sum(-1))
  out = []
  for i in range(len(EMB)):
    pos = [j for j in range(len(EMB)) if j != i and VALID[j] and LABELS[j] == LABELS[i]]
    neg = [j for j in range(len(EMB)) if VALID[j] and LABELS[j] != LABELS[i]]
    if not VALID[i] or not pos or not neg:
      out.append(None)
      continue
    if mode == "batch_hard":
      p, n = max(pos, key=lambda j: d[i, j]), min(neg, key=lambda j: d[i, j])
    else:
      p = pos[min(int(PICK[i, 0] * len(pos)), len(pos) - 1)]
      if mode == "random":
        n = neg[min(int(PICK[i, 1] * len(neg)), len(neg) - 1)]
      else:
        farther = [j for j in neg if d[i, j] > d[i, p]]
        n = (min(farther, key=lambda j: d[i, j]) if farther
             else max(neg, key=lambda j: d[i, j]))
    out.append((p, n))
  return out


@pytest.mark.parametrize("mode", mining.MINING)
def test_mining_matches_a_brute_force_search(mode):
  fn = jax.jit(functools.partial(mining.mine, mode=mode))
  pos, neg, ok = jax.device_get(fn(mining.pairwise_distances(jnp.asarray(EMB)), LABELS,
                                   pick=PICK, valid=VALID))
  expected = _brute_force(mode)
  assert ok.tolist() == [e is not None for e in expected]
  assert [(int(p), int(n)) for p, n, e in zip(pos, neg, expected) if e] == [
      e for e in expected if e]
  assert [i for i, e in enumerate(expected) if e is None] == [8, 9]  # 8: its class-mate is
  # padding, so it has no positive


def test_supervised_contrastive_matches_the_paper_equation():
  """Khosla et al. 2020 eq. 2, written as loops in float64 (independent of the jnp code)."""
  t = 0.1
  z = EMB / np.linalg.norm(EMB, axis=1, keepdims=True)
  expected = np.zeros(len(z))
  for i in range(len(z)):
    others = [a for a in range(len(z)) if a != i and VALID[a]]
    positives = [p for p in others if LABELS[p] == LABELS[i]]
    if VALID[i] and positives:
      log_den = np.log(sum(np.exp(z[i] @ z[a] / t) for a in others))
      expected[i] = -np.mean([z[i] @ z[p] / t - log_den for p in positives])
  loss = jax.jit(functools.partial(L.supervised_contrastive, temperature=t))
  got = loss(jnp.asarray(3.0 * EMB), LABELS, where=VALID)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
  # Finite gradients for a zero embedding and for rows without any candidate.
  x = jnp.zeros((3, 2)).at[1].set(1.0)
  g = jax.jit(jax.grad(lambda x: L.supervised_contrastive(x, jnp.array([0, 0, 1])).sum()))(x)
  assert np.isfinite(np.asarray(g)).all()
  with pytest.raises(ValueError, match="temperature=0"):
    L.supervised_contrastive(x, jnp.array([0, 0, 1]), temperature=0.0)


def test_mined_pair_and_triplet_losses_by_hand():
  """Two classes on a line: batch-hard picks the farthest positive, the closest negative."""
  e = jnp.array([[0.0], [1.0], [3.0], [3.5]])
  batch = {"label": jnp.array([0, 0, 1, 1]), "pick": jnp.zeros((4, 2))}
  # Anchor 0: p = 1 (d 1), n = 2 (d 3); anchor 1: p = 0 (d 1), n = 2 (d 2);
  # anchor 2: p = 3 (d .5), n = 1 (d 2); anchor 3: p = 2 (d .5), n = 1 (d 2.5).
  d_pos, d_neg = np.array([1.0, 1.0, 0.5, 0.5]), np.array([3.0, 2.0, 2.0, 2.5])
  hard = lambda name, **o: np.asarray(jax.jit(lambda e, b: metric_learning.mined_loss(
      name, e, b, mining_mode="batch_hard", options=o))(e, batch))
  np.testing.assert_allclose(hard("contrastive", margin=2.5),
                             (d_pos ** 2 + np.maximum(2.5 - d_neg, 0) ** 2) / 2, rtol=1e-6)
  np.testing.assert_allclose(hard("hinge_embedding", margin=2.5),
                             (d_pos + np.maximum(2.5 - d_neg, 0)) / 2, rtol=1e-6)
  np.testing.assert_allclose(hard("triplet_margin", margin=1.0, eps=0.0),
                             np.maximum(d_pos - d_neg + 1.0, 0), rtol=1e-6)
  # (-cos(a, p) + cos(a, n)) / 2 on 1-D embeddings, where a cosine is the product of the
  # signs and 0 for the zero vector (anchor 0, and anchor 1's positive): 0, 1/2, 0, 0.
  np.testing.assert_allclose(hard("cosine_similarity"), [0.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_retrieval_metrics_by_hand_and_against_scikit_learn():
  from sklearn.neighbors import KNeighborsClassifier
  x = np.array([[0.0], [1.0], [1.5], [3.0], [10.0], [10.2]])
  y = np.array([0, 0, 1, 0, 1, 1])
  # Nearest other: 1 (hit), 2 (miss), 1 (miss), 2 (miss), 5 (hit), 4 (hit).
  assert retrieval.recall_at_k(x, y, ks=(1,))[1] == pytest.approx(3 / 6)
  # R = 2 for every query; relevance of its 2 nearest others and AP@R = sum P(j) rel(j) / 2:
  # 0: [1, 0] -> 1/2; 1: [0, 1] -> 1/4; 2: [0, 0] (the tie 0 / 3 at 1.5 goes to 0) -> 0;
  # 3: [0, 1] -> 1/4; 4: [1, 0] -> 1/2; 5: [1, 0] -> 1/2.
  assert retrieval.map_at_r(x, y) == pytest.approx(2.0 / 6)
  gallery = RNG.normal(size=(60, 4))
  g_labels = RNG.integers(0, 4, 60)
  query, q_labels = RNG.normal(size=(25, 4)), RNG.integers(0, 4, 25)
  sk = KNeighborsClassifier(n_neighbors=5, algorithm="brute").fit(gallery, g_labels)
  assert retrieval.knn_accuracy(query, q_labels, gallery, g_labels, k=5) == pytest.approx(
      np.mean(sk.predict(query) == q_labels))


@pytest.fixture(scope="module")
def paired(data_dir):
  from cnnjax.data import load
  c = ml_config.get_config()
  c.data_dir = data_dir
  c.eval_batch_size = 256
  return metric_learning.MetricLearning(load(c).info, config=c).prepare(load(c))


def test_pairs_are_formed_deterministically_from_seed_and_epoch(paired):
  labels = paired.split_arrays("train")["label"]
  p0 = paired.partners(0)
  assert (labels[p0] == labels).all()
  assert (p0 != np.arange(len(labels))).all()  # every digits class has many examples
  assert (p0 == paired.partners(0)).all() and (p0 != paired.partners(1)).any()
  assert (p0 != paired.with_seed(1).partners(0)).any()
  batch = next(paired.train_batches(0))
  plain = next(paired.base.train_batches(0))
  b = paired.batch_size
  assert batch["image"].shape == (2 * b, 8, 8, 1) and batch["pick"].shape == (2 * b, 2)
  np.testing.assert_array_equal(batch["image"][0::2], plain["image"])  # anchors: the usual
  np.testing.assert_array_equal(batch["label"][1::2], plain["label"])  # partner: same class
  # Resuming at step 3 gives the same batch as a full pass.
  third = list(paired.train_batches(0))[3]
  resumed = next(paired.train_batches(0, start_step=3))
  np.testing.assert_array_equal(third["pick"], resumed["pick"])
  np.testing.assert_array_equal(third["image"], resumed["image"])


def test_evaluation_batches_cover_queries_and_gallery_once(paired):
  batches = list(paired.eval_batches("test"))
  for prefix, split in (("", "test"), ("gallery_", "train")):
    index = np.concatenate([b[prefix + "index"][b[prefix + "mask"] > 0] for b in batches])
    assert sorted(index.tolist()) == list(range(paired.num_examples(split)))
  assert len(batches) == -(-paired.num_examples("train") // 256)


def _triplet_config():
  """metric_learning.py with the triplet loss and batch-hard mining (mining in the step)."""
  c = ml_config.get_config()
  c.loss.name, c.loss.temperature = "triplet_margin", None
  c.loss.margin, c.loss.mining = 0.2, "batch_hard"
  return c


def test_config_errors():
  config_lib.validate(ml_config.get_config())
  config_lib.validate(_triplet_config())
  bad = [({"model": "bn_cnn"}, "normalize=True needs a model"),
         ({"loss.name": "focal", "loss.margin": None, "loss.mining": None},
          r"cannot train an embedding; use one of \['contrastive'"),
         ({"loss.mining": "hardest"}, "loss.mining='hardest' is not accepted"),
         ({"loss.name": "supervised_contrastive", "loss.margin": None},
          "loss.mining is not an option of supervised_contrastive"),
         ({"loss.swap": True, "loss.name": "contrastive"}, "loss.swap is not an option of "
          "contrastive")]
  for overrides, message in bad:
    c = _triplet_config()
    for key, value in overrides.items():
      *parents, leaf = key.split(".")
      node = c
      for p in parents:
        node = node[p]
      node[leaf] = value
    with pytest.raises(ValueError, match=message):
      config_lib.validate(c)


def test_short_run_end_to_end(tmp_path, data_dir):
  c = _triplet_config()
  c.data_dir = data_dir
  c.num_train_steps = 12
  c.log_every_steps = 6
  c.progress = "none"
  c.parallel = "none"
  summary = loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert summary["status"] == "completed" and summary["headline"] == "recall_at_1"
  for key in ("recall_at_1", "recall_at_5", "map_at_r", "knn_accuracy"):
    assert 0.0 <= summary[f"test_{key}"] <= 1.0, key
  assert os.path.getsize(tmp_path / "run" / "plots" / "embedding_pca.png") > 0
  # The raw-pixel baseline came through the step's scattered buffers; the same metrics
  # straight from the dataset's arrays must agree exactly.
  from cnnjax.data import load
  data = load(c)
  flat = lambda s: data.arrays(s)[0].reshape(data.num_examples(s), -1)
  direct = retrieval.retrieval_metrics(flat("test"), data.arrays("test")[1], flat("train"),
                                       data.arrays("train")[1])
  for key, value in direct.items():
    assert summary[f"test_pixel_{key}"] == pytest.approx(value, abs=1e-12), key
