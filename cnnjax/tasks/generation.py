"""Image generation: a GAN scored by the Fréchet distance in a reference classifier's features.

``config.model`` names a generator / discriminator pair of `cnnjax.models.GAN_MODELS`
(``dcgan``); ``config.optimizer`` trains the generator and
``config.gan.discriminator_optimizer`` the discriminator, one update each per step
(`cnnjax.training.adversarial`). ``loss.name`` is a discriminator loss and brings its
generator loss along (`PAIRS`); ``loss.r1_gamma`` adds the R1 penalty (Mescheder et al.
2018) to the discriminator's loss.

Evaluation (`GenerationView.eval_batches`) puts two sources side by side in each batch:
the split's real images and the indices of ``gan.num_samples`` latent vectors (as many
as the training split has, by default; a vector is a function of its index only, so
every evaluation sees the same ones). The step generates from the latents and passes
both through the reference classifier (`cnnjax.tasks.reference`), summing per source the
count, the sum and the sum of outer products of the penultimate features, so batches and
devices add up. The training images' Gaussian, which does not change, is computed once
(`prepare`). `finalize` reports:

* ``fd``: the Fréchet distance (`cnnjax.frechet`) between the generated samples and the
  split (the headline: lower is better);
* ``fd_floor``: the same distance between the training images and the split, what a
  generator that reproduced the training set would reach with the same sample sizes;
  ``fd_ratio = fd / fd_floor``;
* ``confidence``: the reference classifier's mean top-class probability on the samples
  (``real_confidence``: on the split's images);
* ``classes_covered``: the classes whose share of the samples (by the classifier's
  prediction) is at least a quarter of the uniform share 1/C; ``class_share_min`` and
  ``class_share_max``, which expose mode collapse;
* ``d_real`` and ``d_fake``: the discriminator's mean score on the split and the samples;
* ``loss``: the generator's loss on the samples against the current discriminator.

A run also evaluates its initial generator on test (``start_test_fd``: the ceiling).
Plots: ``samples_epoch_NNN.png`` after each validation (the first ``gan.grid_size``
latents), ``samples.png`` and ``class_shares.png`` at the end.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from cnnjax import config as config_lib
from cnnjax import frechet
from cnnjax import losses as losses_lib
from cnnjax.data import views
from cnnjax.tasks.base import Batch, Task, TaskLoss, unit_rate

# Discriminator loss -> its generator loss.
PAIRS = {"gan_discriminator": "gan_generator",
         "gan_hinge_discriminator": "gan_hinge_generator",
         "lsgan_discriminator": "lsgan_generator"}
_SOURCES = (("real", ""), ("fake", "latent_"))
EVAL_LATENT_SEED = 0x5A3B1E  # the fixed latents of every evaluation (all seeds alike)


class GenerationView(views.DatasetView):
  """Evaluation batches of real, training and latent rows (see the module docstring).

  Batch keys: ``image``, ``label``, ``mask``, ``index`` (the split), ``latent_mask``,
  ``latent_index``.
  """

  def __init__(self, base, num_samples: int):
    super().__init__(base)
    self.num_samples = num_samples or base.num_examples("train")

  def eval_batches(self, split: str, *, process_index: int = 0, process_count: int = 1):
    data = self.base
    return views.zipped_eval_batches(
        [("", data.split_arrays(split, dtype=np.uint8), data.num_examples(split)),
         ("latent_", {}, self.num_samples)],
        data.eval_batch_size, process_index=process_index, process_count=process_count)


def gaussian_sums(features: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Count, sum and sum of outer products of the masked-in rows of ``features`` ``[N, F]``."""
  f = jnp.where(mask[:, None] > 0, features, 0.0)
  return {"n": jnp.sum(mask), "sum": jnp.sum(f, axis=0), "outer": f.T @ f}


def eval_step(state, batch: Batch, *, task: "Generation", loss_fn: TaskLoss, apply_fn: Callable,
              latent_dim: int, axis_name: str | None = None) -> dict[str, jax.Array]:
  """Generates from the batch's latents; the task's summable statistics and the loss."""
  from cnnjax.training import adversarial  # pylint: disable=g-import-not-at-top
  g = state.generator
  z = adversarial.latents(jax.random.key(EVAL_LATENT_SEED), batch["latent_index"], latent_dim)
  fake, _ = adversarial.generate(apply_fn, g.eval_params(), g.batch_stats, z, train=False)
  d_params = state.discriminator.params
  d_real = adversarial.discriminate(apply_fn, d_params, batch["image"])
  d_fake = adversarial.discriminate(apply_fn, d_params, fake)
  losses = loss_fn({"real": d_real, "fake": d_fake,
                    "real_grad": jnp.zeros_like(batch["image"])}, batch)
  generated = batch["latent_mask"]
  sums = {"loss_sum": jnp.sum(jnp.where(generated > 0, losses["generator"], 0.0)),
          "count": jnp.sum(batch["mask"]),
          **task.eval_sums({"fake": fake, "d_real": d_real, "d_fake": d_fake}, batch)}
  return sums if axis_name is None else lax.psum(sums, axis_name)


class Generation(Task):
  """A GAN trained and scored as the module docstring says. Headline: ``fd`` (lower is better).

  Example:
    >>> from cnnjax.data import catalog
    >>> task = Generation(catalog.dataset_info("digits"))
    >>> task.headline, task.headline_goal, task.model_names()
    ('fd', 'min', ['dcgan'])
  """

  name = "generation"
  batch_fields = ("label",)  # the labels are only read by the reference classifier's checks
  train_metric_names = ("d_loss", "g_loss", "d_real", "d_fake", "r1")
  headline = "fd"
  headline_goal = "min"
  headline_percent = False
  evaluate_at_start = True

  def __init__(self, info, *, data=None, config=None):
    super().__init__(info, data=data, config=config)
    self.reference = None  # set by `prepare`, with the training images' Gaussian
    self.train_gaussian = None

  @property
  def output_size(self) -> int:
    return 1

  @classmethod
  def model_names(cls) -> list[str]:
    from cnnjax.models import GAN_MODELS  # pylint: disable=g-import-not-at-top
    return sorted(GAN_MODELS)

  def loss_names(self) -> list[str]:
    return sorted(PAIRS)

  @property
  def curve_metrics(self) -> tuple[str, ...]:
    return ("d_loss", "g_loss", "fd", "classes_covered")

  def check_config(self, config: ml_collections.ConfigDict) -> None:
    from cnnjax import optimizers  # pylint: disable=g-import-not-at-top
    from cnnjax.tasks import reference  # pylint: disable=g-import-not-at-top
    a = config.augment
    if a.crop_padding or a.flip or a.rotation_degrees or a.scale or a.cutout:
      raise ValueError("augment is not supported by task='generation' (augmenting only the "
                       "real images would teach the generator the augmentations); set every "
                       "augment key to its default")
    config_lib.check_choice("gan.reference_model", config.gan.reference_model, reference.MODELS)
    try:
      optimizers.validate(config.gan.discriminator_optimizer)
    except ValueError as e:
      raise ValueError(str(e).replace("optimizer.", "gan.discriminator_optimizer.", 1)) from e

  # -- assembly ---------------------------------------------------------------

  def prepare(self, data):
    from cnnjax.tasks import reference  # pylint: disable=g-import-not-at-top
    if self.reference is None:
      self.reference = reference.load(self.config)
      self.train_gaussian = self.reference.gaussian(data.split_arrays("train")["image"])
    if isinstance(data, GenerationView):
      return data
    return GenerationView(data, self.config.gan.num_samples)

  def make_model(self, config: ml_collections.ConfigDict, **fields):
    from cnnjax.models import GAN_MODELS  # pylint: disable=g-import-not-at-top
    return GAN_MODELS[config.model](image_shape=tuple(self.info.image_shape),
                                    latent_dim=config.gan.latent_dim, width=config.gan.width,
                                    dtype=config.dtype, **fields)

  optimizer_as_value = False  # two networks, two optimizers (their own hooks)

  def make_initializer(self, model, tx, config: ml_collections.ConfigDict, total_steps: int):
    from cnnjax import optimizers  # pylint: disable=g-import-not-at-top
    from cnnjax.training import adversarial, build  # pylint: disable=g-import-not-at-top
    d_section = config.gan.discriminator_optimizer
    d_tx = optimizers.make_optimizer(unit_rate(d_section), total_steps)
    return adversarial.make_initializer(
        model, tx, d_tx, self.info.image_shape,
        discriminator_learning_rate=build.configured_learning_rate(d_section),
        ema_decay=config.optimizer.ema_decay)

  def train_step(self, run, loss_fn: TaskLoss) -> Callable:
    from cnnjax.training import adversarial  # pylint: disable=g-import-not-at-top
    return functools.partial(adversarial.train_step, loss_fn=loss_fn,
                             latent_dim=run.config.gan.latent_dim,
                             skip_nonfinite=run.config.on_nonfinite == "skip")

  def eval_step(self, run, loss_fn: TaskLoss) -> Callable:
    return functools.partial(eval_step, task=self, loss_fn=loss_fn,
                             apply_fn=run.eval_model.apply, latent_dim=run.config.gan.latent_dim)

  def with_learning_rate_scale(self, run, state, factor: float):
    from cnnjax.training import adversarial, build  # pylint: disable=g-import-not-at-top
    d_rate = build.configured_learning_rate(run.config.gan.discriminator_optimizer)
    return adversarial.with_learning_rate_scales(state, run.learning_rate * factor,
                                                 d_rate * factor)

  # -- loss -------------------------------------------------------------------

  def make_loss(self, loss_config: ml_collections.ConfigDict) -> TaskLoss:
    name = losses_lib.canonical_name(loss_config.name)
    if name not in PAIRS:
      raise ValueError(f"loss.name={loss_config.name!r} is not a discriminator loss; use one "
                       f"of {sorted(PAIRS)} (each brings its generator loss)")
    options = config_lib.loss_options(loss_config)
    gamma = options.pop("r1_gamma", None)
    accepted = losses_lib.options_of(name)
    for key in sorted(options):
      if key not in accepted:
        raise ValueError(f"loss.{key} is not an option of {name}; accepted: "
                         f"{sorted(accepted + ['r1_gamma'])} (None unsets an option)")
    d_loss, g_loss = losses_lib.get(name), losses_lib.get(PAIRS[name])

    def loss_fn(outputs: Mapping[str, jax.Array], batch: Batch) -> dict[str, jax.Array]:
      del batch
      losses = {"discriminator": d_loss((outputs["real"], outputs["fake"]), **options),
                "generator": g_loss(outputs["fake"]), "r1": jnp.zeros_like(outputs["real"])}
      if gamma:
        losses["r1"] = losses_lib.r1_penalty(outputs["real_grad"], gamma=gamma)
        losses["discriminator"] = losses["discriminator"] + losses["r1"]
      return losses

    loss_fn.__name__ = name + (f"_r1_{gamma:g}" if gamma else "")
    shape = jax.ShapeDtypeStruct((2,), jnp.float32)
    jax.eval_shape(loss_fn, {"real": shape, "fake": shape, "real_grad": jax.ShapeDtypeStruct(
        (2, *self.info.image_shape), jnp.float32)}, {})
    return loss_fn

  # -- metrics ----------------------------------------------------------------

  def eval_sums(self, outputs: Mapping[str, jax.Array], batch: Batch) -> dict[str, jax.Array]:
    images = {"real": batch["image"], "fake": outputs["fake"]}
    sums = {}
    for source, prefix in _SOURCES:
      mask = batch[prefix + "mask"]
      features, probs = self.reference.features(images[source])
      sums[source] = gaussian_sums(features, mask)
      sums[source]["confidence"] = jnp.sum(mask * jnp.max(probs, axis=-1))
      sums[source]["classes"] = jnp.sum(
          mask[:, None] * jax.nn.one_hot(jnp.argmax(probs, -1), probs.shape[-1]), axis=0)
    sums["real"]["score"] = jnp.sum(batch["mask"] * outputs["d_real"])
    sums["fake"]["score"] = jnp.sum(batch["latent_mask"] * outputs["d_fake"])
    grid = self.config.gan.grid_size
    index = jnp.where((batch["latent_mask"] > 0) & (batch["latent_index"] < grid),
                      batch["latent_index"], grid)
    sums["samples"] = jnp.zeros((grid, *outputs["fake"].shape[1:])).at[index].add(
        outputs["fake"], mode="drop")
    return sums

  def finalize(self, sums: Mapping[str, Any],
               validation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    del validation  # no metric here is calibrated on validation
    s = jax.tree.map(np.asarray, dict(sums))
    real, fake = (frechet.gaussian_from_sums(s[k]["n"], s[k]["sum"], s[k]["outer"])
                  for k in ("real", "fake"))
    train = self.train_gaussian
    n_real, n_fake = float(s["real"]["n"]), float(s["fake"]["n"])
    fd, floor = frechet.frechet_distance(*fake, *real), frechet.frechet_distance(*train, *real)
    shares = s["fake"]["classes"] / n_fake
    final = {
        "loss": float(s["loss_sum"]) / n_fake, "count": int(n_real),
        "fd": fd, "fd_floor": floor, "fd_ratio": fd / floor if floor > 0 else float("inf"),
        "confidence": float(s["fake"]["confidence"]) / n_fake,
        "real_confidence": float(s["real"]["confidence"]) / n_real,
        "classes_covered": int(np.sum(shares >= 0.25 / len(shares))),
        "class_share_min": float(shares.min()), "class_share_max": float(shares.max()),
        "d_real": float(s["real"]["score"]) / n_real, "d_fake": float(s["fake"]["score"]) / n_fake,
        "reference_test_accuracy": self.reference.test_accuracy if self.reference else None,
        "samples": s["samples"], "class_shares": shares,
    }
    return final

  # -- report -----------------------------------------------------------------

  def epoch_report(self, directory: str, epoch: int, final: Mapping[str, Any]) -> list[str]:
    from cnnjax.reporting import task_plots  # pylint: disable=g-import-not-at-top
    name = f"samples_epoch_{epoch:03d}.png"
    task_plots.save_image_grid(final["samples"], os.path.join(directory, name))
    return [name]

  def report(self, directory: str, final: Mapping[str, Any], title: str,
             examples: Mapping[str, np.ndarray] | None = None) -> list[str]:
    del examples  # the plots here need no test examples
    from cnnjax.reporting import task_plots  # pylint: disable=g-import-not-at-top
    task_plots.plot_sample_grid(final["samples"], os.path.join(directory, "samples.png"),
                                f"{title}: test FD {final['fd']:.3g} (floor "
                                f"{final['fd_floor']:.3g}), {final['classes_covered']} classes")
    task_plots.plot_class_shares(final["class_shares"], os.path.join(directory, "class_shares.png"),
                                 f"{title}: reference-classifier predictions on the samples")
    return ["samples.png", "class_shares.png"]

  def summary_rows(self, summary: Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    keys = ("fd_floor", "fd_ratio", "confidence", "classes_covered", "class_share_min")
    return [(f"test {k}", summary.get(f"test_{k}")) for k in keys] + [
        ("FD at step 0", summary.get("start_test_fd"))]
