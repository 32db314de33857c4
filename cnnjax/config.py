"""The config schema: every key cnnjax knows, its one default, and `validate`.

`get_config()` returns the schema with its defaults. Experiment configs
(``experiments/configs/*.py``) start from it and override only what differs, so a key
never has two defaults; `python -m experiments.main` locks the config, so an override
of a key that is not listed here is refused. `validate(config)` checks a whole config
once per run, before any data is read or anything is compiled, and raises a one-line
`ValueError` naming the key, the bad value and what is accepted.

    >>> config = get_config()
    >>> config.task, config.dataset, config.model
    ('classification', 'digits', 'bn_cnn')
    >>> validate(config)
    >>> config.loss.gamma = 2.0  # sparse_categorical_cross_entropy takes no gamma
    >>> validate(config)
    Traceback (most recent call last):
    ...
    ValueError: loss.gamma is not an option of sparse_categorical_cross_entropy; accepted: [class_weights, ignore_index, label_smoothing] (None unsets an option)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

__all__ = ["LOSS_OPTIONS", "check_choice", "from_dict", "get_config", "validate"]

DTYPES = ("float32", "bfloat16")
ON_NONFINITE = ("stop", "skip", "rollback")
PROGRESS = ("auto", "bar", "log", "none")

# Every keyword option of a loss that a config can set, with its type; None means "the
# loss's own default". `validate` refuses a set option that the named loss does not take.
LOSS_OPTIONS: dict[str, type] = {
    "label_smoothing": float,  # cross-entropies, focal, poly1, gan_discriminator
    "gamma": float,            # focal, binary_focal
    "alpha": float,            # focal, binary_focal, tversky, symmetric_cross_entropy, nce_rce
    "beta": float,             # tversky, smooth_l1, symmetric_cross_entropy, nce_rce,
                               # bootstrapped_cross_entropy
    "delta": float,            # huber
    "margin": float,           # multi_margin, contrastive, hinge_embedding, triplet_margin
    "p": float,                # multi_margin (1 or 2), triplet_margin (norm degree)
    "epsilon": float,          # poly1_cross_entropy
    "eps": float,              # gaussian_nll, poisson, triplet_margin, iou, giou
    "smooth": float,           # dice, tversky, dice_cross_entropy
    "dice_weight": float,      # dice_cross_entropy
    "ce_weight": float,        # dice_cross_entropy
    "class_weights": tuple,    # sparse_categorical_cross_entropy, multi_margin: [num_classes]
    "ignore_index": int,       # sparse_categorical_cross_entropy; every segmentation loss
    "class_loss_weight": float,  # localization: weight of the class cross-entropy (None = 1)
    "swap": bool,              # triplet_margin
    "full": bool,              # gaussian_nll
    "q": float,                # generalized_cross_entropy
    "mode": str,               # bootstrapped_cross_entropy: soft | hard
    "tau": float,              # logit_adjusted_cross_entropy
    "class_priors": tuple,     # logit_adjusted_cross_entropy; None = the training split's
    "class_counts": tuple,     # ldam; None = the training split's
    "max_margin": float,       # ldam
    "scale": float,            # ldam
    "mining": str,             # metric_learning pair / triplet losses: random | batch_hard |
                               # semi_hard (cnnjax.losses.mining); None = random
    "temperature": float,      # supervised_contrastive
    "r1_gamma": float,         # generation: R1 penalty weight on real data; None = no penalty
}


def _loss_section() -> ml_collections.ConfigDict:
  section = {"name": "sparse_categorical_cross_entropy"}
  section.update({k: config_dict.placeholder(t) for k, t in LOSS_OPTIONS.items()})
  return ml_collections.ConfigDict(section)


def _optimizer_section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="adam",
      learning_rate=config_dict.placeholder(float),  # None = the optimizer's default
      momentum=config_dict.placeholder(float),       # None = the optimizer's default
      b1=config_dict.placeholder(float),
      b2=config_dict.placeholder(float),
      eps=config_dict.placeholder(float),
      schedule="constant",    # constant | cosine | warmup_cosine | step | exponential |
                              # linear | onecycle | cosine_restarts
      warmup_steps=0,         # linear warmup from 0, in optimizer updates
      end_learning_rate_factor=0.0,  # final lr = factor * lr (cosine, linear, exponential)
      step_boundaries=(0.5, 0.75),   # fractions of training (step schedule)
      step_factor=0.1,
      restart_period_fraction=0.25,  # cosine_restarts: cycle length / training (whole cycles)
      weight_decay=config_dict.placeholder(float),   # decoupled, kernels; None = optimizer default
      l2=0.0,                 # coupled: 0.5 * l2 * ||w||^2 added to the loss (kernels only)
      clip_global_norm=0.0,   # 0 = off
      clip_value=0.0,         # 0 = off
      grad_accum_steps=1,     # gradient accumulation: one update per k batches (their mean)
      ema_decay=0.0,          # > 0: evaluate with an EMA of the parameters
      sam_base="adamw",       # name="sam": the optimizer SAM wraps (any other name above)
      rho=0.05,               # name="sam": radius of the ascent step (Foret et al. 2021)
  ))


# What `cnnjax.training.diagnostics` can compute; see docs/curvature.md.
DIAGNOSTICS = ("sharpness", "preconditioned_sharpness", "hessian_trace", "noise_scale")
BATCH_STATS_MODES = ("train", "eval")


def _diagnostics_section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      enabled=False,          # curvature diagnostics during training (docs/curvature.md)
      every_steps=200,        # period in training steps; also at step 0 and the last step
      quantities=("sharpness",),  # any of DIAGNOSTICS
      # The fixed batch: None = one training batch (batch_size examples), 0 = every
      # training example, else this many.
      num_examples=config_dict.placeholder(int),
      batch_stats_mode="train",  # BatchNorm: train = statistics of each training-size batch
                                 # (the training loss) | eval = the running averages
      lanczos_iterations=6,   # Hessian-vector products per sharpness (warm-started from
                              # the last evaluation's eigenvector)
      trace_samples=8,        # Hutchinson probes per hessian_trace
  ))


def _add_corruption_sections(c: ml_collections.ConfigDict) -> None:
  """label_noise, class_imbalance, reweighting."""
  # Corrupted training data: applied to the train split before the validation split is
  # carved from it, so validation is corrupted alike; test stays clean and balanced
  # (cnnjax.data.corruption). What was changed is written to the run's data.json.
  c.label_noise = ml_collections.ConfigDict(dict(
      kind="none",            # none | symmetric | pairflip | asymmetric (digits: 2->7, 3->8, 5<->6, 7->1)
      rate=0.0,               # fraction of each class flipped (asymmetric: of the classes it maps)
      seed=0,                 # which examples flip, and to what (symmetric); apart from `seed`
  ))
  c.class_imbalance = ml_collections.ConfigDict(dict(
      profile="none",         # none | exponential (n_c = n_max ratio^(-c/(C-1))) | step (half at n_max/ratio)
      ratio=1.0,              # n_max / n_min, >= 1
      many_shot_above=100,    # reported bands (classes by training count): many-shot > this,
      few_shot_below=20,      # few-shot < this, medium-shot in between
  ))
  c.reweighting = ml_collections.ConfigDict(dict(
      kind="none",            # none | class_balanced (Cui et al. 2019 weights of the training counts)
      beta=0.9999,            # class_balanced: w_c ∝ (1 - beta) / (1 - beta^n_c)
      start_fraction=0.0,     # weights from this fraction of training on (0.8 = DRW, Cao et al. 2019)
  ))


def _add_task_sections(c: ml_collections.ConfigDict) -> None:
  """The sections of the tasks other than classification."""
  # Task metric_learning (cnnjax.tasks.metric_learning): the model's output is the embedding.
  c.metric_learning = ml_collections.ConfigDict(dict(
      embedding_dim=32,       # embedding size (the model's output width)
      normalize=True,         # L2-normalise embeddings (needs a model with a `normalize`
                              # field: embedding_cnn)
      knn_k=5,                # neighbours of the k-NN accuracy against training embeddings
  ))
  # Task generation (cnnjax.tasks.generation): `optimizer` trains the generator,
  # `gan.discriminator_optimizer` the discriminator.
  c.gan = ml_collections.ConfigDict(dict(
      latent_dim=32,          # size of the generator's input z ~ N(0, I)
      width=32,               # channel unit of both networks (cnnjax.models.gan)
      discriminator_optimizer=_optimizer_section(),
      reference_model="bn_cnn",  # classifier whose features the Fréchet distance compares,
      reference_epochs=30,       # trained once per dataset with these epochs, then cached
      num_samples=0,          # generated samples per evaluation; 0 = as many as the
                              # train split has (the train-vs-test floor's sample size)
      grid_size=64,           # fixed latent vectors drawn in plots/samples_epoch_NNN.png
  ))


def get_config() -> ml_collections.ConfigDict:
  """The schema: every key with its one default."""
  c = ml_collections.ConfigDict()

  # What is learned.
  c.task = "classification"   # see cnnjax.tasks
  c.dataset = "digits"        # see cnnjax.data.catalog (digits is embedded, offline)
  c.data_dir = ""             # "" means $CNNJAX_DATA_DIR, else ~/tensorflow_datasets
  c.validation_fraction = 0.1  # carved deterministically from the train split; 0 = none
  c.train_subset = 0          # > 0: train on a fixed subset of this many training examples
                              # (the same for every seed; e.g. full-batch gradient descent)
  c.augment = ml_collections.ConfigDict(dict(
      crop_padding=0,         # random crop after zero padding by this many pixels (a shift)
      flip=False,             # random horizontal flip
      rotation_degrees=0.0,   # random rotation in [-d, d]
      scale=0.0,              # random zoom in [1 - s, 1 + s]
      cutout=0,               # side of a zeroed square at a random place (0 = off)
  ))

  _add_corruption_sections(c)

  # Model.
  c.model = "bn_cnn"          # see cnnjax.models
  c.dropout_rate = config_dict.placeholder(float)  # None = the model's own default
  c.dtype = "float32"         # compute dtype: float32 | bfloat16 (parameters stay float32)

  # Budget.
  c.num_epochs = 30
  c.num_train_steps = 0       # > 0 overrides num_epochs
  c.batch_size = 32           # global batch, over all devices and processes
  c.eval_batch_size = 512
  c.seed = 0

  # Loss: `name` plus the options of that loss (README, "Losses"); unset options are None.
  c.loss = _loss_section()
  # Optimizer (README, "Optimizers").
  c.optimizer = _optimizer_section()
  # Curvature during training (off by default).
  c.diagnostics = _diagnostics_section()

  _add_task_sections(c)

  # Devices.
  c.parallel = "auto"         # auto | none | pmap | sharded
  c.bn_sync = "global"        # global | per_device
  c.distributed = False       # call jax.distributed.initialize (auto on SLURM/TPU/MPI)

  # Bookkeeping.
  c.log_every_steps = 50
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 0  # > 0: also every this many steps inside epochs
  c.checkpoint_every_seconds = 30.0  # at epoch ends: save when this long since the last save
                                     # (a new best and the last epoch are always saved)
  c.keep_checkpoints = 2
  c.on_nonfinite = "stop"     # stop | skip (keep the old state, count) | rollback
  c.max_consecutive_nonfinite = 10
  c.rollback_lr_factor = 0.5
  c.progress = "auto"         # auto (bar on a terminal, else log lines) | bar | log | none
  return c


# ------------------------------------------------------------------------ validation


def locate(config: ml_collections.ConfigDict, dotted: str) -> tuple[Any, str]:
  """The section holding the key ``dotted`` ("optimizer.name") and the key's last part.

  Raises:
    KeyError: ``dotted`` is not a key of ``config``.
  """
  *parents, leaf = dotted.split(".")
  node = config
  try:
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(leaf)
  except (KeyError, TypeError, AttributeError) as e:
    raise KeyError(dotted) from e
  return node, leaf


def check_choice(key: str, value: Any, choices) -> None:
  """Raises ValueError unless ``value`` is one of ``choices``."""
  if value not in choices:
    raise ValueError(f"{key}={value!r} is not accepted; expected one of {sorted(choices)}")


def _check(ok: bool, key: str, value: Any, accepted: str) -> None:
  if not ok:
    raise ValueError(f"{key}={value!r} is invalid; {accepted}")


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _key_differences(config: Mapping, schema: Mapping, prefix: str = "") -> tuple[list, list]:
  unknown, missing = [], []
  for k in config:
    if k not in schema:
      unknown.append(prefix + k)
    elif isinstance(config[k], Mapping) and isinstance(schema[k], Mapping):
      u, m = _key_differences(config[k], schema[k], f"{prefix}{k}.")
      unknown += u
      missing += m
  missing += [prefix + k for k in schema if k not in config]
  return unknown, missing


def _check_keys(config: ml_collections.ConfigDict) -> None:
  unknown, missing = _key_differences(config.to_dict(), get_config().to_dict())
  if unknown:
    raise ValueError(f"unknown config key(s) {unknown}; the accepted keys and their defaults "
                     "are in cnnjax/config.py")
  if missing:
    raise ValueError(f"config lacks key(s) {missing}; start from cnnjax.config.get_config() "
                     "(or experiments/configs/base.py)")


def _check_numbers(c: ml_collections.ConfigDict) -> None:
  for key in ("batch_size", "eval_batch_size", "log_every_steps", "eval_every_epochs",
              "keep_checkpoints", "max_consecutive_nonfinite"):
    _check(_is_int(c[key]) and c[key] > 0, key, c[key], "expected an integer > 0")
  for key in ("num_epochs", "num_train_steps", "checkpoint_every_steps", "seed", "train_subset"):
    _check(_is_int(c[key]) and c[key] >= 0, key, c[key], "expected an integer >= 0")
  if c.num_epochs == 0 and c.num_train_steps == 0:
    raise ValueError("num_epochs=0 and num_train_steps=0: nothing to train; set one of them > 0")
  # The same range `cnnjax.data.Dataset` accepts: 0 means no validation split.
  _check(_is_number(c.validation_fraction) and 0.0 <= c.validation_fraction < 1.0,
         "validation_fraction", c.validation_fraction,
         "expected a fraction in [0, 1) (0 = no validation split)")
  if c.dropout_rate is not None:
    _check(0.0 <= c.dropout_rate < 1.0, "dropout_rate", c.dropout_rate,
           "expected a rate in [0, 1), or None for the model's default")
  _check(_is_number(c.checkpoint_every_seconds) and c.checkpoint_every_seconds >= 0,
         "checkpoint_every_seconds", c.checkpoint_every_seconds,
         "expected seconds >= 0 (0 = save at every epoch end)")
  _check(_is_number(c.rollback_lr_factor) and 0.0 < c.rollback_lr_factor < 1.0,
         "rollback_lr_factor", c.rollback_lr_factor, "expected a factor in (0, 1)")
  a = c.augment
  for key in ("crop_padding", "cutout"):
    _check(_is_int(a[key]) and a[key] >= 0, f"augment.{key}", a[key], "expected an integer >= 0")
  _check(_is_number(a.rotation_degrees) and 0.0 <= a.rotation_degrees <= 180.0,
         "augment.rotation_degrees", a.rotation_degrees, "expected degrees in [0, 180]")
  _check(_is_number(a.scale) and 0.0 <= a.scale < 1.0, "augment.scale", a.scale,
         "expected a fraction in [0, 1)")


def _check_data_sections(c: ml_collections.ConfigDict) -> None:
  from cnnjax.data import corruption  # pylint: disable=g-import-not-at-top
  noise, imbalance, weighting = c.label_noise, c.class_imbalance, c.reweighting
  check_choice("label_noise.kind", noise.kind, corruption.NOISE_KINDS)
  _check(_is_number(noise.rate) and 0.0 <= noise.rate <= 1.0, "label_noise.rate", noise.rate,
         "expected a fraction in [0, 1]")
  _check(_is_int(noise.seed) and noise.seed >= 0, "label_noise.seed", noise.seed,
         "expected an integer >= 0")
  check_choice("class_imbalance.profile", imbalance.profile, corruption.IMBALANCE_PROFILES)
  _check(_is_number(imbalance.ratio) and imbalance.ratio >= 1.0, "class_imbalance.ratio",
         imbalance.ratio, "expected n_max / n_min >= 1")
  for key in ("many_shot_above", "few_shot_below"):
    _check(_is_int(imbalance[key]) and imbalance[key] >= 0, f"class_imbalance.{key}",
           imbalance[key], "expected an integer >= 0")
  _check(imbalance.few_shot_below <= imbalance.many_shot_above + 1, "class_imbalance.few_shot_below",
         imbalance.few_shot_below, f"expected <= many_shot_above + 1 ({imbalance.many_shot_above + 1})")
  check_choice("reweighting.kind", weighting.kind, ("none", "class_balanced"))
  _check(_is_number(weighting.beta) and 0.0 <= weighting.beta < 1.0, "reweighting.beta",
         weighting.beta, "expected a number in [0, 1)")
  _check(_is_number(weighting.start_fraction) and 0.0 <= weighting.start_fraction < 1.0,
         "reweighting.start_fraction", weighting.start_fraction,
         "expected a fraction of training in [0, 1)")
  if noise.kind == "asymmetric":
    from cnnjax.data import catalog  # pylint: disable=g-import-not-at-top
    classes = catalog.dataset_info(c.dataset).num_classes
    _check(classes == 10, "label_noise.kind", noise.kind,
           f"asymmetric noise maps digit classes; dataset={c.dataset!r} has {classes} classes")


def _check_task_sections(c: ml_collections.ConfigDict) -> None:
  m, g = c.metric_learning, c.gan
  for key in ("embedding_dim", "knn_k"):
    _check(_is_int(m[key]) and m[key] > 0, f"metric_learning.{key}", m[key],
           "expected an integer > 0")
  _check(isinstance(m.normalize, bool), "metric_learning.normalize", m.normalize,
         "expected True or False")
  for key in ("latent_dim", "width", "reference_epochs", "grid_size"):
    _check(_is_int(g[key]) and g[key] > 0, f"gan.{key}", g[key], "expected an integer > 0")
  _check(_is_int(g.num_samples) and g.num_samples >= 0, "gan.num_samples", g.num_samples,
         "expected an integer >= 0 (0 = as many as the train split has)")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every key of ``config``; raises ValueError (one line) for the first bad one.

  Covers the key set (unknown or missing keys), every choice and range, the loss
  (it must fit the task and take the options that are set) and the optimizer
  section. Reads no data and compiles nothing.
  """
  # Imported here: a config file imports this module, and must stay instant to load.
  from cnnjax import optimizers, parallel, tasks  # pylint: disable=g-import-not-at-top
  from cnnjax.data import catalog  # pylint: disable=g-import-not-at-top

  _check_keys(config)
  check_choice("task", config.task, tasks.names())
  check_choice("dataset", config.dataset, catalog.DATASETS)
  check_choice("model", config.model, tasks.TASKS[config.task].model_names())
  check_choice("dtype", config.dtype, DTYPES)
  check_choice("parallel", config.parallel, parallel.MODES)
  check_choice("bn_sync", config.bn_sync, parallel.BN_SYNC)
  check_choice("on_nonfinite", config.on_nonfinite, ON_NONFINITE)
  check_choice("progress", config.progress, PROGRESS)
  _check_numbers(config)
  _check_data_sections(config)
  _check_task_sections(config)
  info = catalog.dataset_info(config.dataset)
  missing = [f for f in tasks.TASKS[config.task].batch_fields if f not in info.fields]
  if missing:
    fits = sorted(d.name for d in catalog.DATASETS.values()
                  if set(tasks.TASKS[config.task].batch_fields) <= set(d.fields))
    raise ValueError(f"task={config.task!r} needs {missing} in every example; dataset="
                     f"{config.dataset!r} has {list(info.fields)}; use one of {fits}")
  task = tasks.get_task(config.task, info, config=config)
  _check_task_fit(config, task)
  task.check_loss(config.loss)
  optimizers.validate(config.optimizer)
  task.check_config(config)
  _check_diagnostics(config)


def _check_diagnostics(c: ml_collections.ConfigDict) -> None:
  from cnnjax import optimizers  # pylint: disable=g-import-not-at-top
  d = c.diagnostics
  _check(isinstance(d.enabled, bool), "diagnostics.enabled", d.enabled, "expected True or False")
  for key in ("every_steps", "lanczos_iterations", "trace_samples"):
    _check(_is_int(d[key]) and d[key] > 0, f"diagnostics.{key}", d[key], "expected an integer > 0")
  _check(d.num_examples is None or (_is_int(d.num_examples) and d.num_examples >= 0),
         "diagnostics.num_examples", d.num_examples,
         "expected None (one training batch) or an integer >= 0 (0 = every training example)")
  check_choice("diagnostics.batch_stats_mode", d.batch_stats_mode, BATCH_STATS_MODES)
  quantities = tuple(d.quantities) if isinstance(d.quantities, (tuple, list)) else None
  _check(bool(quantities) and all(q in DIAGNOSTICS for q in quantities)
         and len(set(quantities)) == len(quantities), "diagnostics.quantities", d.quantities,
         f"expected a tuple of distinct names from {list(DIAGNOSTICS)}")
  base = optimizers.base_name(c.optimizer)
  if "preconditioned_sharpness" in quantities and base not in PRECONDITIONED:
    raise ValueError(f"diagnostics.quantities has 'preconditioned_sharpness' but the optimizer "
                     f"is {base!r}; it is defined for {list(PRECONDITIONED)}")
  if d.enabled and d.batch_stats_mode == "train" and (d.num_examples or 0) % c.batch_size:
    raise ValueError(f"diagnostics.num_examples={d.num_examples} must be a multiple of "
                     f"batch_size={c.batch_size} with batch_stats_mode='train' (each "
                     "training-size batch keeps its own BatchNorm statistics)")


# Optimizers whose state holds Adam's second moment (`cnnjax.curvature.adam_preconditioner`).
PRECONDITIONED = ("adam", "adamw", "nadam", "nadamw")


def from_dict(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The schema with ``values`` set on it, e.g. a run's ``config.json`` read back.

  JSON lists become the schema's tuples; keys the values lack keep their defaults (a run
  written before a key existed trained with its default); an unknown key is refused.

    >>> config = from_dict({"model": "tiny_cnn", "optimizer": {"step_boundaries": [0.3, 0.6]}})
    >>> config.model, config.optimizer.step_boundaries, config.batch_size
    ('tiny_cnn', (0.3, 0.6), 32)
  """
  config = get_config()
  _assign(config, values, "")
  return config


def _assign(node: ml_collections.ConfigDict, values: Mapping[str, Any], prefix: str) -> None:
  for key, value in values.items():
    if key not in node:
      raise ValueError(f"unknown config key {prefix + key!r}; the accepted keys and their "
                       "defaults are in cnnjax/config.py")
    if isinstance(node[key], ml_collections.ConfigDict):
      _assign(node[key], value, f"{prefix}{key}.")
      continue
    if isinstance(value, list) and issubclass(node.get_type(key), tuple):
      value = tuple(value)
    node[key] = value


def _check_task_fit(config: ml_collections.ConfigDict, task) -> None:
  """The model gives what the task reads, and augmentation is sound for the task."""
  from cnnjax import models  # pylint: disable=g-import-not-at-top
  kind = models.output_kind(config.model) if config.model in models.MODELS else None
  if kind is not None and kind != task.model_output:
    fits = [m for m in task.model_names()
            if m in models.MODELS and models.output_kind(m) == task.model_output]
    what = {"vector": "one output vector per image", "per_pixel": "per-pixel logits"}
    raise ValueError(f"model={config.model!r} gives {what[kind]}; task={config.task!r} needs "
                     f"{what[task.model_output]}: use one of {fits}")
  if not task.image_only_augmentation:
    schema = get_config().augment
    changed = sorted(k for k in schema if config.augment[k] != schema[k])
    if changed:
      raise ValueError(f"augment.{changed[0]}={config.augment[changed[0]]!r}: augmentation "
                       f"moves only the image, and task={config.task!r} has labels (masks, "
                       "boxes, reading order) that would have to move with it; leave every "
                       "augment key at its default")


def loss_options(loss_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The options set in a ``loss`` section (every key but ``name`` whose value is not None)."""
  return {k: v for k, v in loss_config.items() if k != "name" and v is not None}
