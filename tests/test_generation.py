"""Generation: the GAN losses, the R1 penalty, the D-then-G step, the Fréchet distance and a
short end-to-end run with a tiny reference classifier."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.linalg

from cnnjax import config as config_lib
from cnnjax import frechet
from cnnjax import losses as L
from cnnjax import optimizers
from cnnjax.data import catalog
from cnnjax.models import DCGAN
from cnnjax.study import report
from cnnjax.tasks import generation, reference
from cnnjax.tasks.base import unit_rate
from cnnjax.training import adversarial, loop
from experiments.configs import gan as gan_config

REAL = np.array([-2.0, -0.5, 0.0, 0.7, 3.0], np.float32)
FAKE = np.array([1.5, -1.0, 0.2, -3.0, 0.0], np.float32)


def test_adversarial_losses_by_hand():
  @jax.jit
  def all_losses(r, f):
    return (L.gan_hinge_discriminator((r, f)), L.gan_hinge_generator(f),
            L.lsgan_discriminator((r, f)), L.lsgan_generator(f), L.gan_discriminator((r, f)),
            L.gan_generator(f))
  hinge_d, hinge_g, ls_d, ls_g, ns_d, ns_g = map(np.asarray, all_losses(REAL, FAKE))
  r, f = REAL.astype(np.float64), FAKE.astype(np.float64)
  np.testing.assert_allclose(hinge_d, np.maximum(0, 1 - r) + np.maximum(0, 1 + f), rtol=1e-6)
  np.testing.assert_allclose(hinge_g, -f, rtol=1e-6)
  np.testing.assert_allclose(ls_d, 0.5 * (r - 1) ** 2 + 0.5 * f ** 2, rtol=1e-6)
  np.testing.assert_allclose(ls_g, 0.5 * (f - 1) ** 2, rtol=1e-6)
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  np.testing.assert_allclose(ns_d, -np.log(sigmoid(r)) - np.log(1 - sigmoid(f)), rtol=1e-5)
  np.testing.assert_allclose(ns_g, -np.log(sigmoid(f)), rtol=1e-5)
  # Finite gradients at extreme scores.
  big = jnp.array([-1e4, 1e4])
  grads = jax.jit(jax.grad(lambda x: sum(jnp.sum(l) for l in all_losses(x, -x))))(big)
  assert np.isfinite(np.asarray(grads)).all()
  with pytest.raises(TypeError, match="pair"):
    L.lsgan_discriminator(REAL)


@pytest.fixture(scope="module")
def tiny_gan():
  """A width-4 DCGAN pair with SGD (rate 0.1) for both networks, and its initial state."""
  model = DCGAN(image_shape=(8, 8, 1), latent_dim=4, width=4)
  section = ml_collections.ConfigDict(config_lib.get_config().optimizer.to_dict())
  section.name = "sgd"
  tx = optimizers.make_optimizer(unit_rate(section), 10)
  init = adversarial.make_initializer(model, tx, tx, (8, 8, 1), discriminator_learning_rate=0.1)
  return model, init(jax.random.key(0), 0.1)


TASK = generation.Generation(catalog.dataset_info("digits"))


def test_r1_penalty_by_hand_and_through_the_step(tiny_gan):
  g = np.array([[[1.0, 2.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]], np.float32)
  np.testing.assert_allclose(L.r1_penalty(g, gamma=10.0), [5 * 9.0, 5 * 9.0])
  with pytest.raises(ValueError, match="gamma=-1"):
    L.r1_penalty(g, gamma=-1.0)
  # The step's one-backward-pass gradients (one VJP of the whole batch's scores) equal
  # per-example gradients of D's score.
  model, state = tiny_gan
  real = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1))
  d = state.discriminator.params
  loss_fn = TASK.make_loss(ml_collections.ConfigDict({"name": "lsgan_d", "r1_gamma": 4.0}))

  @jax.jit
  def both(d):
    scores, vjp = jax.vjp(lambda x: adversarial.discriminate(model.apply, d, x), real)
    r1 = loss_fn({"real": scores, "fake": scores, "real_grad": vjp(jnp.ones(3))[0]}, {})["r1"]
    per_example = jax.vmap(jax.grad(
        lambda x: adversarial.discriminate(model.apply, d, x[None])[0]))(real)
    return r1, 2.0 * jnp.sum(jnp.square(per_example), axis=(1, 2, 3))

  r1, expected = both(d)
  np.testing.assert_allclose(r1, expected, rtol=1e-5)


def test_train_step_updates_the_discriminator_then_the_generator(tiny_gan):
  """Against a plain re-derivation: SGD on D's loss, then SGD on G's loss through the
  *updated* D (gradients by jax.grad of whole functions, not the step's VJP plumbing)."""
  model, state = tiny_gan
  lr = 0.1
  loss_fn = TASK.make_loss(ml_collections.ConfigDict({"name": "gan_hinge_discriminator"}))
  batch = {"image": jax.random.uniform(jax.random.key(2), (6, 8, 8, 1))}
  rng = jax.random.key(5)
  step = jax.jit(functools.partial(adversarial.train_step, loss_fn=loss_fn, latent_dim=4))
  new, metrics = step(state, batch, rng)

  z = jax.random.normal(jax.random.fold_in(rng, 0), (6, 4))
  g0, d0, stats = state.generator.params, state.discriminator.params, state.generator.batch_stats
  gen = lambda g: adversarial.generate(model.apply, g, stats, z, train=True)[0]
  disc = lambda d, x: adversarial.discriminate(model.apply, d, x)

  @jax.jit
  def reference_update():
    fake = gen(g0)
    d_grad = jax.grad(lambda d: jnp.mean(L.gan_hinge_discriminator((disc(d, batch["image"]),
                                                                     disc(d, fake)))))(d0)
    d1 = jax.tree.map(lambda p, g: p - lr * g, d0, d_grad)
    g_grad = jax.grad(lambda g: jnp.mean(L.gan_hinge_generator(disc(d1, gen(g)))))(g0)
    return d1, jax.tree.map(lambda p, g: p - lr * g, g0, g_grad)

  d1, g1 = reference_update()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new.discriminator.params, d1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new.generator.params, g1)
  assert int(new.step) == 1 and float(metrics["r1"]) == 0.0
  assert set(metrics) >= {"loss", "d_loss", "g_loss", "d_real", "d_fake", "grad_norm",
                          "learning_rate", "nonfinite"}


def test_frechet_distance_against_scipy():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(300, 6))
  b = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 0.5
  m1, c1 = frechet.gaussian_from_sums(len(a), a.sum(0), a.T @ a)
  m2, c2 = frechet.gaussian_from_sums(len(b), b.sum(0), b.T @ b)
  np.testing.assert_allclose(c1, np.cov(a, rowvar=False), rtol=1e-10)
  # The usual FID formula (pytorch-fid): tr sqrtm(C1 C2) with scipy.linalg.sqrtm.
  expected = (np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2)
              - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2).real))
  assert frechet.frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-9)
  assert frechet.frechet_distance(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-9)
  with pytest.raises(ValueError, match="at least 2"):
    frechet.gaussian_from_sums(1, a[0], np.outer(a[0], a[0]))


def test_study_ranks_the_lowest_distance_first():
  results = [{"setting": s, "diverged": False, "test_fd": v, "test_loss": 0.0, "headline": "fd",
              "headline_goal": "min", "headline_percent": False}
             for s, v in (("a", 30.0), ("a", 32.0), ("b", 10.0), ("b", 12.0))]
  assert [r["setting"] for r in report.aggregate(results)] == ["b", "a"]


def _tiny(data_dir):
  c = gan_config.get_config()
  c.data_dir = data_dir
  c.gan.reference_model, c.gan.reference_epochs = "tiny_cnn", 1
  c.gan.width, c.gan.latent_dim, c.gan.grid_size = 4, 8, 16
  c.num_train_steps, c.log_every_steps = 8, 4
  c.progress, c.parallel = "none", "none"
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("gan"))
  return workdir, loop.train_and_evaluate(_tiny(data_dir), workdir)


def test_short_run_end_to_end(finished, data_dir):
  workdir, summary = finished
  assert summary["status"] == "completed" and summary["headline"] == "fd"
  assert summary["start_test_fd"] > 0 and summary["test_fd"] > 0
  assert 0 <= summary["test_classes_covered"] <= 10 and 0 < summary["test_confidence"] <= 1
  for name in ("samples_epoch_001.png", "samples.png", "class_shares.png",
               "learning_curves.png"):
    assert os.path.getsize(os.path.join(workdir, "plots", name)) > 0, name
  history = summary["history"][-1]
  assert {"train_d_loss", "train_g_loss", "val_fd", "val_classes_covered"} <= set(history)
  # The floor (train vs test) from the run's summed statistics equals the same distance
  # computed here from the reference classifier's features in float64 numpy.
  c = _tiny(data_dir)
  ref = reference.load(c)
  with open(os.path.join(ref.directory, "reference.json")) as f:
    assert json.load(f)["test_accuracy"] == ref.test_accuracy
  from cnnjax.data import load
  data = load(c)
  feats = jax.jit(lambda x: ref.features(x)[0])
  # In chunks of 512, the shapes `Reference.gaussian` compiles for (a cached executable).
  f = {s: np.concatenate([np.asarray(feats(x[i:i + 512]), np.float64)
                          for i in range(0, len(x), 512)])
       for s, x in ((s, data.arrays(s)[0]) for s in ("train", "test"))}
  floor = frechet.frechet_distance(f["train"].mean(0), np.cov(f["train"], rowvar=False),
                                   f["test"].mean(0), np.cov(f["test"], rowvar=False))
  assert summary["test_fd_floor"] == pytest.approx(floor, rel=1e-4)


def test_config_errors(data_dir):
  config_lib.validate(gan_config.get_config())
  cases = [({"augment.crop_padding": 1}, "augment is not supported by task='generation'"),
           ({"model": "bn_cnn"}, r"model='bn_cnn' is not accepted; expected one of \['dcgan'\]"),
           ({"loss.name": "gan_generator"}, "is not a discriminator loss"),
           ({"loss.margin": 1.0}, r"loss.margin is not an option of gan_discriminator"),
           ({"gan.reference_model": "resnet20"}, "gan.reference_model='resnet20'"),
           ({"gan.discriminator_optimizer.learning_rate": -1.0},
            "gan.discriminator_optimizer.learning_rate"),
           ({"gan.latent_dim": 0}, "gan.latent_dim=0")]
  for overrides, message in cases:
    c = gan_config.get_config()
    for key, value in overrides.items():
      *parents, leaf = key.split(".")
      node = c
      for p in parents:
        node = node[p]
      node[leaf] = value
    with pytest.raises(ValueError, match=message):
      config_lib.validate(c)


def test_gan_study_trains_every_run_alone():
  from cnnjax.study import grid
  from experiments.configs import compare_gan_losses
  study = compare_gan_losses.get_config()
  variants = grid.expand(study)
  assert len(variants) == 18 and len({v.setting for v in variants}) == 6
  assert [len(g) for g in grid.group_variants(variants, vmap=study.vmap)] == [1] * 18
  assert len(grid.group_variants(variants)) == 1  # value-only differences: one group
  with pytest.raises(ValueError, match="study.vmap='no'"):
    grid.expand(ml_collections.ConfigDict({**study.to_dict(), "vmap": "no"}))
