"""Workloads of the optimizer benchmark (`experiments.benchmark_optimizers`).

Each module's ``get_config()`` returns a workload: ``name``, ``description``, ``base`` (a
full run config: task, dataset, model, step budget), ``target`` (a value of the task's
headline metric on the validation split) and ``reference`` (how the target was set: the
AlgoPerf way, the median over seeds of the best validation value of a reference run).
"""

import importlib

import ml_collections

NAMES = ("digits_bn_cnn", "mnist5k_lenet5", "scenes_localization")


def load(name: str):
  """The workload config ``name`` (one of `NAMES`).

  Raises:
    ValueError: an unknown name (the message lists the known ones).
  """
  if name not in NAMES:
    raise ValueError(f"unknown workload {name!r}; known workloads: {list(NAMES)}")
  return importlib.import_module(f"experiments.configs.workloads.{name}").get_config()


def make(name: str, description: str, base: ml_collections.ConfigDict, *, target: float,
         reference: tuple[str, float, tuple[float, ...]]) -> ml_collections.ConfigDict:
  """A workload: ``base`` at a constant rate, with no weight decay but the optimizer's own
  default and the rate left to the optimizer (the benchmark sets it), on one device.

  ``reference`` is (optimizer, learning rate, the best validation values of its seeds
  0, 1, 2), the run the ``target`` was set from.
  """
  base.optimizer.schedule = "constant"
  base.optimizer.learning_rate = None
  base.optimizer.weight_decay = None
  base.parallel = "none"
  base.progress = "none"
  optimizer, rate, measured = reference
  w = ml_collections.ConfigDict()
  w.name = name
  w.description = description
  w.base = base
  w.reference = ml_collections.ConfigDict(dict(
      optimizer=optimizer, learning_rate=rate, seeds=(0, 1, 2), measured=measured))
  w.target = target
  return w
