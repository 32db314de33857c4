"""Study grids: expand a study config into variants, and group the variants that can share
one compiled, vmapped program.

A *study config* (``experiments/configs/compare_*.py``) holds a full experiment config in
``base`` and the axes to sweep:

* ``optimizers``: optimizer names (empty = the base's optimizer);
* ``learning_rates``: rates (empty = each optimizer's ``base`` rate, i.e. its own default
  when the base leaves ``optimizer.learning_rate`` unset);
* ``losses``: loss specs ``"name"`` or ``"name:key=value,key=value"`` (empty = the base loss);
* ``seeds``: the seeds every setting is repeated with (>= 1);
* ``target``: a value of the task's headline metric on validation (e.g. accuracy 0.97)
  whose first reach is reported per run (optional);
* ``title``: the report's title;
* ``conditions``: *points* (see `parse_point`) that set any config keys, e.g. the label
  noise (empty = the base); the report ranks the settings within each condition;
* ``methods``: points compared within a condition, like ``losses`` but free to set
  other keys too (e.g. a loss with deferred re-weighting);
* ``columns``: result keys shown beside the ranking metric (e.g. ``"test_ece"``);
* ``rank_by``: the result key to rank by ("" = ``test_<headline>``);
* ``select_by``: a validation metric (e.g. ``"accuracy"``) by which each run's best
  epoch is chosen; that epoch's state is also tested (``selected_test_*`` keys) ("" =
  none);
* ``vmap``: False trains every run alone (one compiled program per structure, reused
  through the compilation cache) instead of stacking value-only differences;
* ``strategy``: how a group's runs share its one compiled program: ``"vmap"`` (stacked),
  ``"sequential"`` (one un-vmapped program, runs one after another, an epoch per call),
  ``"lanes"`` (the same, one run per device side by side) or ``"auto"`` (the fastest on
  the backend: lanes on CPU, vmap on accelerators); ``--strategy`` overrides it.

A *variant* is one point of the product; a *setting* is a variant without its seed (the
unit that results are averaged over). Variants differ in *values* (seed, learning rate,
loss and loss options) or in *structure* (anything else, e.g. the optimizer name, which
changes the optimizer state's pytree). `group_variants` puts variants with the same
structure into one group, trained together by `cnnjax.study.vmapped.train_group`.

Example:
  >>> import ml_collections
  >>> from cnnjax import config as config_lib
  >>> study = ml_collections.ConfigDict(dict(
  ...     base=config_lib.get_config(), optimizers=("sgd", "adam"), learning_rates=(),
  ...     losses=("sparse_categorical_cross_entropy", "focal:gamma=2.0"), seeds=(0, 1)))
  >>> variants = expand(study)
  >>> len(variants), variants[0].setting
  (8, 'sgd / sparse_categorical_cross_entropy')
  >>> [len(g) for g in group_variants(variants)]
  [4, 4]
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import itertools
import json
from collections.abc import Sequence
from typing import Any

import ml_collections

from cnnjax import config as schema
from cnnjax import optimizers as optimizers_lib

__all__ = [
    "Variant", "expand", "group_key", "group_variants", "parse_loss_spec", "parse_point",
    "STRATEGIES", "STUDY_KEYS", "VALUE_KEYS",
]

# Config keys whose value may differ inside one vmapped group (traced values, or a
# per-variant loss chosen inside the program). Everything else must be equal.
VALUE_KEYS = ("seed", "optimizer.learning_rate", "loss")
# Keys that change only how a run is displayed.
_PRESENTATION_KEYS = ("progress", "log_every_steps")

STUDY_KEYS = ("base", "optimizers", "learning_rates", "losses", "seeds", "target", "title",
              "conditions", "methods", "columns", "rank_by", "select_by", "vmap", "strategy")
STRATEGIES = ("auto", "vmap", "sequential", "lanes")


@dataclasses.dataclass(frozen=True)
class Variant:
  """One training run of a study.

  Attributes:
    index: position in the expanded grid (stable; results are listed in this order).
    name: a unique label, e.g. ``"adam lr=0.001 / focal(gamma=2.0) / seed 1"``.
    setting: the label without the seed (results are averaged over seeds per setting).
    seed: the run's seed.
    optimizer: the optimizer name.
    learning_rate: the effective rate (the optimizer's default when unset).
    loss: the loss spec string.
    overrides: ``{dotted key: value}`` applied to the base config.
    condition: the label of the variant's condition ("" without conditions).
    method: the label of its method ("" without methods).
    config: the full experiment config of this run.
  """
  index: int
  name: str
  setting: str
  seed: int
  optimizer: str
  learning_rate: float
  loss: str
  overrides: dict[str, Any]
  config: ml_collections.ConfigDict = dataclasses.field(compare=False, repr=False)
  condition: str = ""
  method: str = ""


def _literal(value: str, bare_words: bool) -> Any:
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    if bare_words and value.isidentifier():
      return value  # a bare word is a string: kind=symmetric
    raise


def _pairs(body: str, what: str, bare_words: bool) -> dict[str, Any]:
  """``"k=v,k=v"`` -> ``{k: literal v}``; errors name ``what`` (the whole spec)."""
  pairs: dict[str, Any] = {}
  for item in filter(None, (s.strip() for s in body.split(","))):
    key, eq, value = item.partition("=")
    if not eq or not key.strip():
      raise ValueError(f"{what}: option {item!r} must look like key=value")
    try:
      pairs[key.strip()] = _literal(value.strip(), bare_words)
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"{what}: value {value.strip()!r} of {key.strip()!r} is not a Python "
                       "literal (number, None, True/False, tuple)"
                       + (" or a bare word" if bare_words else "")) from e
  return pairs


def parse_loss_spec(spec: str) -> tuple[str, dict[str, Any]]:
  """``"focal:gamma=2.0,alpha=None"`` -> ``("focal", {"gamma": 2.0, "alpha": None})``.

  Values are Python literals (numbers, None, True/False, tuples).

  Example:
    >>> parse_loss_spec("sparse_categorical_cross_entropy:label_smoothing=0.1")
    ('sparse_categorical_cross_entropy', {'label_smoothing': 0.1})
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"loss spec {spec!r} must be a non-empty string like "
                     "'name' or 'name:key=value,key=value'")
  name, _, rest = spec.partition(":")
  return name.strip(), _pairs(rest, f"loss spec {spec!r}", bare_words=False)


def parse_point(spec: str) -> tuple[str, dict[str, Any]]:
  """``"label: key=value,key=value"`` -> ``(label, {dotted key: value})``.

  Keys are dotted config keys; values are Python literals or bare words (strings). The
  label (before ``": "``) is optional and defaults to the spec itself.

  Example:
    >>> parse_point("40% sym: label_noise.kind=symmetric,label_noise.rate=0.4")
    ('40% sym', {'label_noise.kind': 'symmetric', 'label_noise.rate': 0.4})
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"study point {spec!r} must be a non-empty string like "
                     "'label: key=value,key=value'")
  label, sep, body = spec.partition(": ")
  if not sep:
    label, body = spec.strip(), spec
  return label.strip(), _pairs(body, f"study point {spec!r}", bare_words=True)


def _loss_label(name: str, options: dict[str, Any]) -> str:
  if not options:
    return name
  return f"{name}({', '.join(f'{k}={v}' for k, v in options.items())})"


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  try:
    node, leaf = schema.locate(config, dotted)
  except KeyError as e:
    raise ValueError(f"study: {dotted!r} is not a config key (see cnnjax/config.py)") from e
  # An int for a float key (ratio=10) is what the user meant.
  node[leaf] = float(value) if isinstance(node[leaf], float) and isinstance(value, int) \
      and not isinstance(value, bool) else value


def _check_study(study: ml_collections.ConfigDict) -> None:
  unknown = sorted(set(study.keys()) - set(STUDY_KEYS))
  if unknown:
    raise ValueError(f"unknown study key(s) {unknown}; accepted: {list(STUDY_KEYS)}")
  if "base" not in study or not isinstance(study.base, ml_collections.ConfigDict):
    raise ValueError("study.base must be an experiment ConfigDict (e.g. "
                     "experiments.configs.default.get_config())")
  seeds = tuple(study.get("seeds", ()) or ())
  if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
    raise ValueError(f"study.seeds={seeds!r} must be a non-empty tuple of integers")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"study.seeds={seeds!r} has repeated seeds")
  if not isinstance(study.get("vmap", True), bool):
    raise ValueError(f"study.vmap={study.vmap!r}: expected True or False")
  if study.get("strategy", "auto") not in STRATEGIES:
    raise ValueError(f"study.strategy={study.strategy!r}: expected one of {list(STRATEGIES)}")
  for lr in tuple(study.get("learning_rates", ()) or ()):
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
      raise ValueError(f"study.learning_rates has {lr!r}; each rate must be a number > 0")
  names = optimizers_lib.names()
  for name in tuple(study.get("optimizers", ()) or ()):
    if not isinstance(name, str):
      raise ValueError(f"study.optimizers has {name!r}; expected names such as {names[:8]}")


def _points(study, key: str) -> tuple[tuple[str, dict[str, Any]], ...]:
  return tuple(parse_point(p) for p in tuple(study.get(key, ()) or ()))


def _base_loss_spec(base) -> str:
  from cnnjax import config as config_lib  # pylint: disable=g-import-not-at-top
  opts = config_lib.loss_options(base.loss)
  return base.loss.name + (":" + ",".join(f"{k}={v!r}" for k, v in opts.items()) if opts else "")


def _variant_config(base, spec: str, point_overrides: dict[str, Any],
                    opt: str, lr, seed: int) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  loss_name, loss_options = parse_loss_spec(spec)
  config = copy.deepcopy(base)
  overrides: dict[str, Any] = {"optimizer.name": opt, "loss.name": loss_name, "seed": seed}
  if lr is not None:
    overrides["optimizer.learning_rate"] = float(lr)
  # Options the base set for another loss would not apply to this one.
  for key in config.loss:
    if key != "name":
      config.loss[key] = None
  unknown = sorted(set(loss_options) - set(config.loss))
  if unknown:
    raise ValueError(f"loss spec {spec!r}: unknown option(s) {unknown}; options a config "
                     f"can set: {sorted(k for k in config.loss if k != 'name')}")
  if "loss.name" in point_overrides:
    loss_options = {}  # a point that names the loss brings its own options
    overrides["loss.name"] = point_overrides["loss.name"]
  overrides.update({f"loss.{k}": v for k, v in loss_options.items()})
  overrides.update(point_overrides)
  for key, value in overrides.items():
    _set(config, key, value)
  return config, overrides


def expand(study: ml_collections.ConfigDict) -> list[Variant]:
  """All variants of ``study``: conditions x optimizers x learning_rates x losses x methods
  x seeds, in that order.

  Each variant's config is a deep copy of ``study.base`` with its overrides applied (a
  condition's or method's after the loss spec's) and validated (`cnnjax.config.validate`,
  once per variant).

  Raises:
    ValueError: an unknown study key, an empty or repeated seed list, a bad loss spec or
      point, or a variant config that does not validate (the message names the variant).
  """
  from cnnjax import config as config_lib  # pylint: disable=g-import-not-at-top
  _check_study(study)
  base = study.base
  opt_names = tuple(study.get("optimizers", ()) or ()) or (base.optimizer.name,)
  lrs = tuple(study.get("learning_rates", ()) or ()) or (None,)
  loss_specs = tuple(study.get("losses", ()) or ()) or (_base_loss_spec(base),)
  conditions = _points(study, "conditions") or (("", {}),)
  methods = _points(study, "methods") or (("", {}),)
  show_lr = len(lrs) > 1 or lrs[0] is not None
  show_loss = bool(study.get("losses", ())) or not study.get("methods", ())

  variants = []
  grid = itertools.product(conditions, opt_names, lrs, loss_specs, methods, tuple(study.seeds))
  for i, ((cond, cond_over), opt, lr, spec, (method, method_over), seed) in enumerate(grid):
    config, overrides = _variant_config(base, spec, {**cond_over, **method_over}, opt, lr, seed)
    effective_lr = config.optimizer.learning_rate
    if effective_lr is None:
      effective_lr = optimizers_lib.default_learning_rate(
          optimizers_lib.base_name(config.optimizer))
    loss_label = _loss_label(*parse_loss_spec(spec)) if show_loss else ""
    what = " + ".join(x for x in (loss_label, method) if x)
    setting = (f"{cond} / " if cond else "") + opt + (
        f" lr={effective_lr:g}" if show_lr else "") + f" / {what}"
    try:
      config_lib.validate(config)
    except (ValueError, TypeError) as e:
      raise ValueError(f"study variant {setting!r} (seed {seed}): {e}") from e
    if effective_lr is None:
      raise ValueError(f"study variant {setting!r}: optimizer {opt!r} has no default "
                       "learning rate; list study.learning_rates")
    loss = config.loss.name if not show_loss else spec
    variants.append(Variant(index=i, name=f"{setting} / seed {seed}", setting=setting, seed=seed,
                            optimizer=opt, learning_rate=float(effective_lr), loss=loss,
                            overrides=overrides, config=config, condition=cond,
                            method=method or loss_label))
  return variants


def group_key(config: ml_collections.ConfigDict, *, optimizer_as_value: bool = False) -> str:
  """The part of a config that must be equal for runs to share one compiled program.

  ``optimizer_as_value``: the optimizer chain is chosen by a value too
  (`cnnjax.optimizers.switched`), so the ``optimizer`` section may differ, except
  ``ema_decay`` (it changes the train state) and a wrapper such as SAM (its step
  computes extra gradients).
  """
  d = json.loads(config.to_json_best_effort())
  for key in VALUE_KEYS + _PRESENTATION_KEYS:
    *parents, leaf = key.split(".")
    node = d
    for p in parents:
      node = node[p]
    node.pop(leaf, None)
  if optimizer_as_value and switchable(config):
    d["optimizer"] = {"ema_decay": d["optimizer"]["ema_decay"]}
  return json.dumps(d, sort_keys=True)


def switchable(config: ml_collections.ConfigDict) -> bool:
  """Whether ``config``'s optimizer can be one choice of a `switched` chain: the task
  builds its optimizer with the default hooks and no wrapper (SAM) is asked for."""
  from cnnjax import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.TASKS.get(config.task)
  return (config.optimizer.name not in optimizers_lib.WRAPPERS and task is not None
          and task.optimizer_as_value)


def group_variants(variants: Sequence[Variant], *, vmap: bool = True,
                   optimizer_as_value: bool = False) -> list[list[Variant]]:
  """Variants grouped by `group_key`, groups in order of first appearance; with
  ``vmap=False`` one group per variant."""
  if not vmap:
    return [[v] for v in variants]
  groups: dict[str, list[Variant]] = {}
  for v in variants:
    groups.setdefault(group_key(v.config, optimizer_as_value=optimizer_as_value),
                      []).append(v)
  return list(groups.values())
