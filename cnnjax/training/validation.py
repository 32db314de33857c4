"""Checks a config and a workdir before any compute, with one-line messages.

Every message names the key, the bad value and what is accepted, so a typo
costs seconds, not a failed run.
"""

from __future__ import annotations

import os

import ml_collections

from cnnjax import losses as losses_lib
from cnnjax import optimizers
from cnnjax import parallel as parallel_lib

def _catalog():
  """`cnnjax.data.catalog`, without importing the data pipeline when it is not loaded yet.

  The package's __init__ pulls in tensorflow_datasets and grain (seconds of
  import); the catalog itself is plain Python, and a typo should fail fast.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  if "cnnjax.data.catalog" in sys.modules:
    return sys.modules["cnnjax.data.catalog"]
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "catalog.py")
  spec = importlib.util.spec_from_file_location("cnnjax_catalog_for_validation", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while decorating
  spec.loader.exec_module(module)
  return module

DTYPES = ("float32", "bfloat16")
ON_NONFINITE = ("stop", "skip", "rollback")
PROGRESS = ("auto", "bar", "log", "none")


def _base_keys() -> dict:
  from experiments.configs import base  # pylint: disable=g-import-not-at-top
  return base.get_config().to_dict()


def _unknown_keys(config: dict, reference: dict, prefix: str = "") -> list[str]:
  out = []
  for k, v in config.items():
    path = f"{prefix}{k}"
    if path == "loss":  # loss options depend on the loss; checked against its signature below
      continue
    if k not in reference:
      out.append(path)
    elif isinstance(v, dict) and isinstance(reference[k], dict):
      out += _unknown_keys(v, reference[k], path + ".")
  return out


def _check(ok: bool, key: str, value, accepted: str) -> None:
  if not ok:
    raise ValueError(f"{key}={value!r} is invalid; {accepted}")


def _choice(key: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"{key}={value!r} is not accepted; expected one of {sorted(choices)}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line) for the first invalid key of ``config``."""
  unknown = _unknown_keys(config.to_dict(), _base_keys())
  if unknown:
    raise ValueError(f"unknown config key(s) {unknown}; see experiments/configs/base.py for the "
                     "accepted keys")
  catalog = _catalog()
  _choice("dataset", config.dataset, catalog.DATASETS)
  from cnnjax.models import MODELS  # pylint: disable=g-import-not-at-top
  _choice("model", config.model, MODELS)
  _choice("dtype", config.dtype, DTYPES)
  _choice("parallel", config.parallel, parallel_lib.MODES)
  _choice("bn_sync", config.bn_sync, parallel_lib.BN_SYNC)
  _choice("on_nonfinite", config.on_nonfinite, ON_NONFINITE)
  _choice("progress", config.progress, PROGRESS)

  for key in ("batch_size", "eval_batch_size", "log_every_steps", "eval_every_epochs",
              "keep_checkpoints", "max_consecutive_nonfinite"):
    v = config[key]
    _check(isinstance(v, int) and v > 0, key, v, "expected an integer > 0")
  for key in ("num_epochs", "num_train_steps", "checkpoint_every_steps", "seed", "microbatches"):
    v = config[key]
    _check(isinstance(v, int) and v >= 0, key, v, "expected an integer >= 0")
  if config.num_epochs == 0 and config.num_train_steps == 0:
    raise ValueError("num_epochs=0 and num_train_steps=0: nothing to train; set one of them > 0")
  _check(0.0 < config.validation_fraction < 1.0, "validation_fraction",
         config.validation_fraction, "expected a fraction in (0, 1)")
  if config.dropout_rate is not None:
    _check(0.0 <= config.dropout_rate < 1.0, "dropout_rate", config.dropout_rate,
           "expected a rate in [0, 1), or None for the model's default")
  _check(0.0 < config.rollback_lr_factor < 1.0, "rollback_lr_factor", config.rollback_lr_factor,
         "expected a factor in (0, 1)")

  a = config.augment
  _check(isinstance(a.crop_padding, int) and a.crop_padding >= 0, "augment.crop_padding",
         a.crop_padding, "expected an integer >= 0")
  _check(isinstance(a.cutout, int) and a.cutout >= 0, "augment.cutout", a.cutout,
         "expected an integer >= 0")
  _check(0.0 <= a.rotation_degrees <= 180.0, "augment.rotation_degrees", a.rotation_degrees,
         "expected degrees in [0, 180]")
  _check(0.0 <= a.scale < 1.0, "augment.scale", a.scale, "expected a fraction in [0, 1)")

  info = catalog.dataset_info(config.dataset)
  options = {k: v for k, v in config.loss.items() if k != "name"}
  losses_lib.for_classification(config.loss.name, num_classes=info.num_classes, **options)
  optimizers.validate(config.optimizer)


def validate_workdir(workdir: str) -> None:
  """Raises ValueError unless ``workdir`` is, or can become, a writable directory."""
  path = os.path.abspath(workdir)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise ValueError(f"workdir={workdir!r} is a file; expected a directory (new or existing)")
    if not os.access(path, os.W_OK | os.X_OK):
      raise ValueError(f"workdir={workdir!r} is not writable")
    return
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f"workdir={workdir!r} cannot be created: {parent} is not a writable directory")
