"""Optax optimizer chains built from the `optimizer` section of a config.

`make_optimizer(config.optimizer, total_steps)` returns one
`optax.GradientTransformation` that composes, in this order::

  MultiSteps(                       # grad_accum_steps > 1
    chain(
      add_decayed_weights(l2),      # coupled L2: grad of 0.5*l2*||w||^2
      clip(clip_value),
      clip_by_global_norm(clip_global_norm),
      with_learning_rate(           # lr = schedule(count) * scale
        optimizer(lr) + decoupled weight decay (-lr * wd * w))))

``name="sam"`` wraps that whole chain, built for ``sam_base``, in sharpness-aware
minimization (Foret et al. 2021, `optax.contrib.sam` in opaque mode): each update first
moves to ``w + rho * g / ||g||`` and feeds the gradient there to the chain. Its
``update`` then needs a ``grad_fn`` (`needs_grad_fn`), which the train step provides.

Weight decay and L2 touch only parameters with ``ndim >= 2`` (conv and dense
kernels), never biases or normalization scales/offsets.

The learning rate lives in the optimizer state, so it can be read
(`learning_rate`) and rescaled at run time (`scale_learning_rate`) by pure
functions, through the MultiSteps wrapper. (Skipping non-finite updates is the
train step's job, ``on_nonfinite="skip"``, not the optimizer's.)

Example:
  >>> import jax.numpy as jnp, ml_collections
  >>> cfg = ml_collections.ConfigDict(dict(
  ...     name="sgd", learning_rate=None, momentum=None, b1=None, b2=None,
  ...     eps=None, schedule="constant", warmup_steps=0,
  ...     end_learning_rate_factor=0.0, step_boundaries=(0.5, 0.75),
  ...     step_factor=0.1, restart_period_fraction=0.25, weight_decay=None,
  ...     l2=0.0, clip_global_norm=0.0, clip_value=0.0, grad_accum_steps=1,
  ...     ema_decay=0.0, sam_base="sgd", rho=0.05))
  >>> tx = make_optimizer(cfg, total_steps=100)
  >>> params = {"w": jnp.ones((2, 2))}
  >>> state = tx.init(params)
  >>> round(float(learning_rate(state)), 6)
  0.01
  >>> updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
  >>> round(float(updates["w"][0, 0]), 6)
  -0.01
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.flatten_util import ravel_pytree

__all__ = [
    "LearningRateState",
    "SwitchedState",
    "base_name",
    "decay_mask",
    "default_hyperparameter",
    "default_learning_rate",
    "default_weight_decay",
    "learning_rate",
    "make_optimizer",
    "make_schedule",
    "names",
    "needs_grad_fn",
    "optax_names",
    "per_coordinate",
    "learning_rate_scale",
    "scale_learning_rate",
    "set_learning_rate_scale",
    "switch_index",
    "switched",
    "with_switch_index",
    "validate",
]

SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "exponential",
             "linear", "onecycle", "cosine_restarts")

# name -> (optax alias, preset keyword arguments, default learning rate).
# The first eight rates are the source tutorials' (SOURCE.md); the others are
# the papers' / reference implementations' defaults, cited in the README, "Optimizers".
_NAMED: dict[str, tuple[str, dict[str, Any], float]] = {
    "sgd": ("sgd", {}, 0.01),
    "momentum": ("sgd", {"momentum": 0.9}, 0.01),
    "nesterov": ("sgd", {"momentum": 0.9, "nesterov": True}, 0.01),
    "adagrad": ("adagrad", {}, 0.01),
    "rmsprop": ("rmsprop", {}, 0.001),
    "adam": ("adam", {}, 0.001),
    "adamw": ("adamw", {}, 0.001),       # Loshchilov & Hutter 2019; torch AdamW
    "adamax": ("adamax", {}, 0.002),
    "nadam": ("nadam", {}, 0.001),
    "nadamw": ("nadamw", {}, 0.001),     # as nadam
    "radam": ("radam", {}, 0.001),       # Liu et al. 2020; torch RAdam
    "lamb": ("lamb", {}, 0.001),         # You et al. 2020; tfa LAMB
    "lars": ("lars", {}, 0.1),           # SGD-scale base rate (You et al. 2017)
    "lion": ("lion", {}, 1e-4),          # Chen et al. 2023: 3-10x below AdamW
    "adabelief": ("adabelief", {}, 0.001),  # Zhuang et al. 2020
    "adafactor": ("adafactor", {}, 0.01),   # Shazeer & Stern 2018 step cap
    "yogi": ("yogi", {}, 0.01),          # Zaheer et al. 2018
    "novograd": ("novograd", {}, 0.001),  # Adam-family default
}

# Other optax aliases with a well-known default rate (by their optax name).
_OTHER_DEFAULTS = {
    "adadelta": 1.0,    # Zeiler 2012 has no rate, i.e. 1.0; torch Adadelta
    "amsgrad": 0.001,   # Reddi et al. 2018; torch Adam(amsgrad=True)
    "adamaxw": 0.002,   # as adamax
}

# optax aliases that take a learning rate but cannot be driven by this module.
_REFUSED = {
    "lbfgs": "needs the loss value and a line search (extra update arguments)",
    "polyak_sgd": "needs the loss value at each update (extra arguments)",
    "rprop": "its learning_rate is an initial step size kept in the state, "
             "so schedules and run-time scaling would not act on it",
}

# Optimizers whose weight decay is part of the update rule itself (it enters
# the trust ratio), so the alias applies it, with our mask.
_DECAY_INSIDE = {"lamb": "mask", "lars": "weight_decay_mask"}

_REQUIRED_KEYS = (
    "name", "learning_rate", "momentum", "b1", "b2", "eps", "schedule",
    "warmup_steps", "end_learning_rate_factor", "step_boundaries",
    "step_factor", "restart_period_fraction", "weight_decay", "l2",
    "clip_global_norm", "clip_value", "grad_accum_steps", "ema_decay", "sam_base", "rho")

# Wrappers that take a base optimizer (``sam_base``) instead of being one.
WRAPPERS = ("sam",)

# Update rules in which each coordinate's update reads only that coordinate's gradient,
# parameter and state, plus scalars (step count, rate): laid out as one vector the
# parameters get the same updates (up to float rounding where XLA vectorises differently).
# Not lamb / lars / novograd (per-tensor norms), adafactor (factored second moments of
# matrices), sm3 (per-axis accumulators).
_PER_COORDINATE = frozenset({
    "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "adamax", "nadam",
    "nadamw", "radam", "lion", "adabelief", "yogi", "amsgrad", "adadelta", "adamaxw"})


def names() -> list[str]:
  """The named optimizers (any other optax alias is accepted by its name).

  Example:
    >>> names()[:3]
    ['sgd', 'momentum', 'nesterov']
  """
  return list(_NAMED)


def optax_names() -> list[str]:
  """Optax aliases accepted by their optax name, besides `names()`."""
  return list(_optax_names())


@functools.cache
def _optax_names() -> tuple[str, ...]:
  # Inspecting optax's signatures takes ~2 ms; a study validates each run's every choice.
  out = []
  for n in dir(optax):
    fn = getattr(optax, n)
    if (n in _NAMED or n in _REFUSED or not inspect.isfunction(fn)
        or not (fn.__module__ or "").startswith("optax._src.alias")):
      continue
    params = inspect.signature(fn).parameters
    if "learning_rate" in params:
      out.append(n)
  return tuple(sorted(out))


def _alias_fn(name: str) -> Callable[..., optax.GradientTransformation]:
  return getattr(optax, _NAMED[name][0] if name in _NAMED else name)


def _alias_params(name: str) -> dict[str, inspect.Parameter]:
  return dict(inspect.signature(_alias_fn(name)).parameters)


def _accepted_names() -> list[str]:
  return names() + optax_names()


def base_name(config: ml_collections.ConfigDict) -> str:
  """The optimizer that makes the updates: ``sam_base`` for ``name="sam"``, else ``name``.

  Example:
    >>> from cnnjax import config as config_lib
    >>> section = config_lib.get_config().optimizer
    >>> section.name, section.sam_base = "sam", "momentum"
    >>> base_name(section)
    'momentum'
  """
  return config.sam_base if config.name in WRAPPERS else config.name


def default_learning_rate(name: str) -> float | None:
  """The learning rate used when `optimizer.learning_rate` is None.

  Args:
    name: an optimizer name (see `names()`) or an optax alias name.

  Returns:
    The default rate, or None for an optax alias with no known default (the
    config must then set `learning_rate`).

  Example:
    >>> default_learning_rate("adamax")
    0.002
  """
  if name in _NAMED:
    return _NAMED[name][2]
  if name not in optax_names():
    raise ValueError(
        f"optimizer.name={name!r} is not an optimizer; accepted: "
        f"{', '.join(_accepted_names())}")
  if name in _OTHER_DEFAULTS:
    return _OTHER_DEFAULTS[name]
  default = _alias_params(name)["learning_rate"].default
  if isinstance(default, (int, float)) and not isinstance(default, bool):
    return float(default)
  return None


def default_hyperparameter(name: str, key: str) -> float | None:
  """The value optimizer ``name`` uses for ``key`` (momentum, b1, b2, eps) when unset.

  Its preset here first (e.g. momentum 0.9 for "momentum"), else the optax default;
  None when it has none (plain "sgd" has no momentum).

  Example:
    >>> default_hyperparameter("adamw", "b2"), default_hyperparameter("nesterov", "momentum")
    (0.999, 0.9)
  """
  if name in _NAMED and key in _NAMED[name][1]:
    return float(_NAMED[name][1][key])
  p = _alias_params(name).get(key)
  if p is None or not _is_number(p.default):
    return None
  return float(p.default)


def default_weight_decay(name: str) -> float:
  """Decoupled weight decay used when `optimizer.weight_decay` is None.

  The optax default of the alias's own `weight_decay` argument (AdamW-style
  aliases: adamw/nadamw 1e-4, lion 1e-3), else 0.

  Example:
    >>> default_weight_decay("adamw"), default_weight_decay("adam")
    (0.0001, 0.0)
  """
  p = _alias_params(name).get("weight_decay")
  if p is not None and isinstance(p.default, (int, float)):
    return float(p.default)
  return 0.0


def per_coordinate(config: ml_collections.ConfigDict) -> bool:
  """Whether the chain `make_optimizer` builds from ``config`` treats every coordinate on
  its own: a per-coordinate update rule, no wrapper, no (masked) weight decay or L2.

  Then the same chain run on the parameters raveled into one vector makes the same
  updates up to float rounding (`switched` with ``flat=True``). Global-norm clipping is
  allowed: one vector's norm is the norm of all the parameters.

  Example:
    >>> from cnnjax import config as config_lib
    >>> section = config_lib.get_config().optimizer
    >>> section.name, section.weight_decay = "adam", None
    >>> per_coordinate(section)
    True
    >>> section.name = "adamw"   # decoupled decay of the kernels only (default 1e-4)
    >>> per_coordinate(section)
    False
  """
  name = config.name
  if name in WRAPPERS or name not in _PER_COORDINATE:
    return False
  wd = default_weight_decay(name) if config.weight_decay is None else config.weight_decay
  return wd == 0 and config.l2 == 0


def decay_mask(params: Any) -> Any:
  """True for parameters that weight decay / L2 apply to (``ndim >= 2``).

  Conv and dense kernels are decayed; biases, normalization scales and
  offsets (all 1-D) are not.

  Example:
    >>> decay_mask({"kernel": jnp.ones((3, 3, 1, 8)), "bias": jnp.ones(8)})
    {'bias': False, 'kernel': True}
  """
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


# ----------------------------------------------------------------- validation

def _fail(key: str, value: Any, why: str) -> ValueError:
  return ValueError(f"optimizer.{key}={value!r} {why}")


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_sam(config: ml_collections.ConfigDict) -> None:
  base = config.sam_base
  if base in WRAPPERS or base not in _accepted_names():
    raise _fail("sam_base", base, f"is not an optimizer SAM can wrap; accepted: "
                f"{', '.join(_accepted_names())}")
  rho = config.rho
  if not _is_number(rho) or not rho > 0 or not math.isfinite(rho):
    raise _fail("rho", rho, "must be > 0 (the radius of the ascent step)")
  if config.grad_accum_steps != 1:
    raise _fail("grad_accum_steps", config.grad_accum_steps, "must be 1 with name='sam' "
                "(the ascent step needs the whole batch's gradient at every update)")


def _check_name_and_rate(config: ml_collections.ConfigDict) -> None:
  if config.name in WRAPPERS:
    _check_sam(config)
  name = base_name(config)
  accepted = _accepted_names()
  if name in _REFUSED:
    raise _fail("name", name, f"is refused: {_REFUSED[name]}; accepted: "
                f"{', '.join(accepted)}")
  if name not in accepted:
    raise _fail("name", name, f"is not an optimizer; accepted: "
                f"{', '.join(accepted + list(WRAPPERS))}")
  lr = config.learning_rate
  if lr is None:
    if default_learning_rate(name) is None:
      raise _fail("learning_rate", lr, f"but optimizer {name!r} has no "
                  "default learning rate; set one > 0")
  elif not _is_number(lr) or not lr > 0 or not math.isfinite(lr):
    raise _fail("learning_rate", lr, "must be > 0 (or None for the "
                "optimizer's default)")
  params = _alias_params(name)
  for key in ("momentum", "b1", "b2", "eps"):
    v = config[key]
    if v is None:
      continue
    if key not in params:
      usable = [k for k in ("momentum", "b1", "b2", "eps") if k in params]
      raise _fail(key, v, f"is not used by optimizer {name!r}; it accepts "
                  f"{usable or 'none of momentum, b1, b2, eps'} (set None)")
    if key == "eps":
      if not _is_number(v) or not v >= 0:
        raise _fail(key, v, "must be >= 0")
    elif not _is_number(v) or not 0 <= v < 1:
      raise _fail(key, v, "must be in [0, 1)")


def _check_regularization(config: ml_collections.ConfigDict) -> None:
  for key in ("weight_decay", "l2", "clip_global_norm", "clip_value"):
    v = config[key]
    if key == "weight_decay" and v is None:
      continue
    if not _is_number(v) or not v >= 0:
      raise _fail(key, v, "must be >= 0 (0 = off)")
  gas = config.grad_accum_steps
  if not isinstance(gas, int) or isinstance(gas, bool) or gas < 1:
    raise _fail("grad_accum_steps", gas, "must be an integer >= 1")
  ema = config.ema_decay
  if not _is_number(ema) or not 0 <= ema < 1:
    raise _fail("ema_decay", ema, "must be in [0, 1) (0 = off)")


def _check_schedule(config: ml_collections.ConfigDict) -> None:
  if config.schedule not in SCHEDULES:
    raise _fail("schedule", config.schedule,
                f"is not a schedule; accepted: {', '.join(SCHEDULES)}")
  w = config.warmup_steps
  if not isinstance(w, int) or isinstance(w, bool) or w < 0:
    raise _fail("warmup_steps", w, "must be an integer >= 0")
  if config.schedule == "warmup_cosine" and w == 0:
    raise _fail("warmup_steps", w, "must be > 0 for schedule "
                "'warmup_cosine' (use 'cosine' for no warmup)")
  f = config.end_learning_rate_factor
  if config.schedule == "exponential":
    if not _is_number(f) or not 0 < f <= 1:
      raise _fail("end_learning_rate_factor", f,
                  "must be in (0, 1] for schedule 'exponential'")
  elif not _is_number(f) or not 0 <= f <= 1:
    raise _fail("end_learning_rate_factor", f, "must be in [0, 1]")
  b = tuple(config.step_boundaries)
  if (not all(_is_number(x) for x in b)
      or not all(0 < x < 1 for x in b)
      or any(x >= y for x, y in zip(b, b[1:]))):
    raise _fail("step_boundaries", b,
                "must be strictly increasing fractions in (0, 1)")
  s = config.step_factor
  if not _is_number(s) or not 0 < s <= 1:
    raise _fail("step_factor", s, "must be in (0, 1]")
  r = config.restart_period_fraction
  if not _is_number(r) or not 0 < r <= 1:
    raise _fail("restart_period_fraction", r, "must be in (0, 1]")


def _check_run_length(config: ml_collections.ConfigDict, total_steps: int) -> None:
  if not isinstance(total_steps, int) or total_steps < 1:
    raise ValueError(f"total_steps={total_steps!r} must be an integer >= 1")
  w, b = config.warmup_steps, tuple(config.step_boundaries)
  if w >= total_steps:
    raise _fail("warmup_steps", w, f"must be < the {total_steps} "
                "optimizer updates of the run")
  if config.schedule == "step":
    for x in b:
      if round(x * total_steps) <= w:
        raise _fail("step_boundaries", b, f"puts a drop at step "
                    f"{round(x * total_steps)}, inside warmup_steps={w}")


def validate(config: ml_collections.ConfigDict,
             total_steps: int | None = None) -> None:
  """Checks an optimizer config section; raises ValueError naming the key.

  Args:
    config: the `optimizer` section of an experiment config.
    total_steps: optimizer updates in the run; when given, schedule lengths
      (warmup, step boundaries) are checked against it.

  Raises:
    ValueError: with a one-line message such as
      ``optimizer.learning_rate=-0.1 must be > 0``.
  """
  missing = [k for k in _REQUIRED_KEYS if k not in config]
  if missing:
    raise ValueError(f"optimizer section lacks keys {missing}; "
                     "start from cnnjax.config.get_config()")
  _check_name_and_rate(config)
  _check_regularization(config)
  _check_schedule(config)
  if total_steps is not None:
    _check_run_length(config, total_steps)


# ------------------------------------------------------------------ schedules

def _after_warmup(config: ml_collections.ConfigDict, lr: float,
                  total_steps: int) -> optax.Schedule:
  """The schedule of the ``total_steps - warmup_steps`` updates after the warmup."""
  kind = config.schedule
  w = int(config.warmup_steps)
  a = float(config.end_learning_rate_factor)
  d = max(total_steps - w, 1)
  if kind == "constant":
    return optax.constant_schedule(lr)
  if kind == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=d, alpha=a)
  if kind == "step":
    drops: dict[int, float] = {}
    for b in config.step_boundaries:
      step = round(b * total_steps) - w
      drops[step] = drops.get(step, 1.0) * float(config.step_factor)
    return optax.piecewise_constant_schedule(lr, drops)
  if kind == "exponential":
    return optax.exponential_decay(lr, transition_steps=d, decay_rate=a, end_value=a * lr)
  if kind == "linear":
    return optax.linear_schedule(lr, a * lr, transition_steps=d)
  if kind == "cosine_restarts":
    # Whole cycles only, so that training ends at the bottom of one.
    n = min(d, max(1, round(1 / config.restart_period_fraction)))
    return optax.sgdr_schedule([
        dict(init_value=lr, peak_value=lr, warmup_steps=0,
             decay_steps=d // n + (i < d % n), end_value=a * lr)
        for i in range(n)])
  raise _fail("schedule", kind, f"is not a schedule; accepted: {', '.join(SCHEDULES)}")


def make_schedule(config: ml_collections.ConfigDict,
                  total_steps: int) -> optax.Schedule:
  """The learning-rate schedule, as a function of the optimizer update count.

  With ``lr`` the learning rate, ``W = warmup_steps``, ``T = total_steps``,
  ``D = T - W``, ``a = end_learning_rate_factor`` and ``t`` the count after
  warmup (``count - W``):

  * warmup (any schedule but onecycle, when ``W > 0``): ``lr * count / W``
  * constant: ``lr``
  * cosine, warmup_cosine: ``lr * (a + (1 - a) * 0.5 * (1 + cos(pi * t / D)))``
  * step: ``lr * step_factor ** (number of b in step_boundaries with
    count >= round(b * T))``
  * exponential: ``max(lr * a ** (t / D), a * lr)``
  * linear: ``lr + (a * lr - lr) * min(t, D) / D``
  * onecycle (optax, Smith 2017): cosine from ``lr/25`` up to ``lr`` at
    ``p*T`` (``p = W/T`` if ``W > 0`` else 0.3), then down to ``lr/2.5e5``
  * cosine_restarts (SGDR): ``n = round(1 / restart_period_fraction)``
    cycles splitting ``D`` (lengths differ by at most 1), each a cosine from
    ``lr`` to ``a * lr``

  Args:
    config: the `optimizer` section (validated).
    total_steps: number of optimizer updates in the run (``T``).

  Returns:
    An optax schedule ``count -> lr``.

  Example:
    >>> import ml_collections
    >>> cfg = ml_collections.ConfigDict(dict(
    ...     name="sgd", learning_rate=0.1, schedule="cosine", warmup_steps=0,
    ...     end_learning_rate_factor=0.0))
    >>> sched = make_schedule(cfg, total_steps=100)
    >>> round(float(sched(50)), 6)
    0.05
  """
  lr = config.learning_rate
  lr = float(default_learning_rate(base_name(config)) if lr is None else lr)
  w = int(config.warmup_steps)
  if config.schedule == "onecycle":
    pct = w / total_steps if w > 0 else 0.3  # torch OneCycleLR pct_start
    return optax.cosine_onecycle_schedule(total_steps, lr, pct_start=pct)
  if config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=w, decay_steps=total_steps,
        end_value=float(config.end_learning_rate_factor) * lr)
  main = _after_warmup(config, lr, total_steps)
  if w == 0:
    return main
  warmup = optax.linear_schedule(0.0, lr, transition_steps=w)
  return optax.join_schedules([warmup, main], [w])


# ------------------------------------------------------ learning-rate wrapper

class LearningRateState(NamedTuple):
  """State of the learning-rate wrapper.

  Attributes:
    count: int32 ``[]``, optimizer updates applied so far.
    scale: float32 ``[]``, run-time multiplier (1 until `scale_learning_rate`).
    learning_rate: float32 ``[]``, ``schedule(count) * scale``: the rate the
      NEXT update will use.
    inner_state: the wrapped optimizer's state.
  """
  count: jax.Array
  scale: jax.Array
  learning_rate: jax.Array
  inner_state: optax.OptState


def _with_learning_rate(
    factory: Callable[[jax.Array], optax.GradientTransformation],
    schedule: optax.Schedule) -> optax.GradientTransformationExtraArgs:
  """Like `optax.inject_hyperparams` for the rate, plus a run-time scale.

  `factory(lr)` is rebuilt at every update with the traced rate; its state
  structure must not depend on `lr` (true of the optax aliases accepted here,
  the same requirement as `optax.inject_hyperparams`).
  """

  def lr_at(count, scale):
    return jnp.asarray(schedule(count), jnp.float32) * scale

  def init(params):
    count = jnp.zeros([], jnp.int32)
    scale = jnp.ones([], jnp.float32)
    lr = lr_at(count, scale)
    return LearningRateState(count, scale, lr, factory(lr).init(params))

  def update(updates, state, params=None, **extra_args):
    lr = lr_at(state.count, state.scale)
    inner = optax.with_extra_args_support(factory(lr))
    updates, inner_state = inner.update(updates, state.inner_state, params,
                                        **extra_args)
    count = optax.safe_int32_increment(state.count)
    return updates, LearningRateState(count, state.scale,
                                      lr_at(count, state.scale), inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


def _is_lr_state(x: Any) -> bool:
  return isinstance(x, LearningRateState)


def has_learning_rate(opt_state: optax.OptState) -> bool:
  """Whether ``opt_state`` comes from `make_optimizer` (and so exposes its rate)."""
  return any(_is_lr_state(x) for x in jax.tree.leaves(opt_state, is_leaf=_is_lr_state))


def learning_rate(opt_state: optax.OptState) -> jax.Array:
  """The learning rate the NEXT update will use (float32 ``[]``).

  Call it on the state before `update` to get the rate that update applies
  (e.g. for per-step logging inside a train step). Pure and jittable. With
  grad_accum_steps=k the rate changes once every k calls to `update`.

  Args:
    opt_state: a state returned by `make_optimizer(...).init/update`.

  Example:
    >>> tx = optax.sgd(0.1)  # not built by make_optimizer
    >>> learning_rate(tx.init({"w": jnp.ones(2)}))
    Traceback (most recent call last):
    ...
    ValueError: opt_state has 0 learning-rate states (expected 1); build it with make_optimizer
  """
  return _lr_state(opt_state).learning_rate


def _lr_state(opt_state: optax.OptState) -> LearningRateState:
  switch = _switched_state(opt_state)
  if switch is not None:
    # The rate of the transformation this state runs (``index``); every choice has one.
    subs = [_lr_state(s) for s in switch.states]
    pick = lambda xs: jnp.stack(xs)[switch.index]
    return LearningRateState(pick([x.count for x in subs]), pick([x.scale for x in subs]),
                             pick([x.learning_rate for x in subs]), None)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_lr_state)
           if _is_lr_state(x)]
  if len(found) != 1:
    raise ValueError(f"opt_state has {len(found)} learning-rate states "
                     "(expected 1); build it with make_optimizer")
  return found[0]


def scale_learning_rate(opt_state: optax.OptState,
                        factor: float | jax.Array) -> optax.OptState:
  """Returns `opt_state` with every later learning rate multiplied by factor.

  Pure (the input is unchanged) and jittable; scales compound, and the
  schedule keeps running underneath (lr = schedule(count) * scale). Used by
  the trainer's divergence rollback.

  Example:
    >>> from cnnjax import config as config_lib
    >>> cfg = config_lib.get_config().optimizer
    >>> cfg.name = "sgd"
    >>> state = make_optimizer(cfg, 10).init({"w": jnp.ones(2)})
    >>> round(float(learning_rate(scale_learning_rate(state, 0.5))), 6)
    0.005
  """
  _check_factor("factor", factor)
  factor = jnp.asarray(factor, jnp.float32)
  return _replace_lr_state(opt_state, lambda x: x._replace(
      scale=x.scale * factor, learning_rate=x.learning_rate * factor))


def _check_factor(what: str, value: Any) -> None:
  if _is_number(value) and not value >= 0:
    raise ValueError(f"{what}={value!r} must be >= 0")


def _replace_lr_state(opt_state, fn):
  _lr_state(opt_state)  # raises unless there is exactly one (per switched choice)
  return jax.tree.map(lambda x: fn(x) if _is_lr_state(x) else x, opt_state,
                      is_leaf=_is_lr_state)


def learning_rate_scale(opt_state: optax.OptState) -> jax.Array:
  """The run-time multiplier on the schedule (float32 ``[]``, 1 at init)."""
  return _lr_state(opt_state).scale


def set_learning_rate_scale(opt_state: optax.OptState,
                            scale: float | jax.Array) -> optax.OptState:
  """Returns `opt_state` with the schedule multiplier set to `scale`.

  Unlike `scale_learning_rate` this does not compound with the multiplier
  already in the state (e.g. one restored from a checkpoint).

  Example:
    >>> from cnnjax import config as config_lib
    >>> state = make_optimizer(config_lib.get_config().optimizer, 10).init(
    ...     {"w": jnp.ones(2)})
    >>> state = set_learning_rate_scale(scale_learning_rate(state, 0.5), 0.25)
    >>> round(float(learning_rate(state)), 8)  # adam: 0.001 * 0.25
    0.00025
  """
  _check_factor("scale", scale)
  scale = jnp.asarray(scale, jnp.float32)

  def set_scale(x):
    # learning_rate = schedule(count) * scale; after a scale of 0 the
    # schedule value is unknown here, so it shows 0 until the next update.
    lr = jnp.where(x.scale != 0, x.learning_rate / x.scale, 0.0) * scale
    return x._replace(scale=scale, learning_rate=lr)

  return _replace_lr_state(opt_state, set_scale)


# ------------------------------------------------- optimizer chosen by a value

class SwitchedState(NamedTuple):
  """State of `switched`: which transformation runs, and every choice's own state.

  Attributes:
    index: int32 ``[]``, the position of the transformation that updates.
    states: one state per transformation (only ``states[index]`` ever changes).
  """
  index: jax.Array
  states: tuple


def switched(transformations, *, flat: bool = False) -> optax.GradientTransformationExtraArgs:
  """One transformation that applies ``transformations[index]``, ``index`` a value in the
  state (`with_switch_index`), so runs with different optimizers share one compiled step.

  ``update`` is a `jax.lax.switch`: with a scalar index only the chosen transformation
  runs, and the result is that transformation's own update and state. Under `jax.vmap`
  the switch evaluates every choice and selects (correct, but each choice costs).
  Each choice keeps its own rate wrapper: `learning_rate` reads the chosen one's, and
  `set_learning_rate_scale` sets every choice's.

  ``flat=True``: every choice works on the parameters raveled into one vector
  (`jax.flatten_util.ravel_pytree`) and the updates are unraveled back; the parameters
  must share one dtype (ValueError otherwise). Only for choices that treat each
  coordinate alone (`per_coordinate`): for them the updates are the same up to float
  rounding, and XLA compiles each choice as a few loops over one vector instead of a few
  per parameter (compare_optimizers' 8-choice lanes program: 6.2-6.9 -> 3.0-3.1 s to
  compile). Anything per tensor goes wrong silently on the vector: a decay mask such as
  `decay_mask` sees one 1-D array and decays nothing, LAMB's trust ratio becomes global.

  Example:
    >>> tx = switched([optax.sgd(0.1), optax.sgd(1.0)])
    >>> params = {"w": jnp.ones(2)}
    >>> state = with_switch_index(tx.init(params), 1)
    >>> updates, _ = tx.update({"w": jnp.ones(2)}, state, params)
    >>> updates["w"].tolist()
    [-1.0, -1.0]
  """
  txs = tuple(optax.with_extra_args_support(t) for t in transformations)
  if not txs:
    raise ValueError("switched needs at least one transformation")

  ravel = ravel_pytree if flat else (lambda tree: (tree, lambda t: t))

  def init(params):
    dtypes = {str(jnp.result_type(x)) for x in jax.tree.leaves(params)}
    if flat and len(dtypes) > 1:
      raise ValueError(f"switched(flat=True) needs parameters of one dtype, got {sorted(dtypes)}")
    params, _ = ravel(params)
    return SwitchedState(jnp.zeros([], jnp.int32), tuple(t.init(params) for t in txs))

  def branch(i):
    def apply(updates, states, params, extra):
      new, state_i = txs[i].update(updates, states[i], params, **extra)
      return new, states[:i] + (state_i,) + states[i + 1:]
    return apply

  def update(updates, state, params=None, **extra_args):
    updates, unravel = ravel(updates)
    params = None if params is None else ravel(params)[0]
    new, states = jax.lax.switch(state.index, [branch(i) for i in range(len(txs))],
                                 updates, state.states, params, extra_args)
    return unravel(new), SwitchedState(state.index, states)

  return optax.GradientTransformationExtraArgs(init, update)


def _is_switched(x: Any) -> bool:
  return isinstance(x, SwitchedState)


def _switched_state(opt_state: optax.OptState) -> SwitchedState | None:
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_switched) if _is_switched(x)]
  return found[0] if found else None


def with_switch_index(opt_state: optax.OptState, index: int | jax.Array) -> optax.OptState:
  """``opt_state`` (from `switched`) set to run transformation ``index``."""
  if _switched_state(opt_state) is None:
    raise ValueError("opt_state has no switched state; build it with switched()")
  index = jnp.asarray(index, jnp.int32)
  return jax.tree.map(lambda x: x._replace(index=index) if _is_switched(x) else x, opt_state,
                      is_leaf=_is_switched)


def switch_index(opt_state: optax.OptState) -> jax.Array | None:
  """The chosen transformation of a `switched` state (None for any other state)."""
  switch = _switched_state(opt_state)
  return None if switch is None else switch.index


# ------------------------------------------------------------------- builder

def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """Builds the optax chain described by the `optimizer` config section.

  Args:
    config: the `optimizer` section of an experiment config (see
      experiments/configs/base.py); validated first.
    total_steps: calls to `update` over the run (train steps; micro-batches
      when grad_accum_steps > 1). The schedule spans
      ``total_steps // grad_accum_steps`` optimizer updates, and
      `warmup_steps` counts optimizer updates.

  Returns:
    An `optax.GradientTransformation`; `update` needs `params`. Read and
    change its rate with `learning_rate` / `scale_learning_rate`.

  Raises:
    ValueError: for an invalid config (see `validate`).
  """
  if not isinstance(total_steps, int) or total_steps < 1:
    raise ValueError(f"total_steps={total_steps!r} must be an integer >= 1")
  k = config.get("grad_accum_steps")
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    raise _fail("grad_accum_steps", k, "must be an integer >= 1")
  if total_steps < k:
    raise _fail("grad_accum_steps", k, f"must be <= total_steps={total_steps}")
  updates_total = total_steps // k
  # Once, with the run length: the schedule checks need the number of updates.
  validate(config, updates_total)

  factory = _update_rule(config)
  chain = []
  if config.l2 > 0:
    chain.append(optax.add_decayed_weights(float(config.l2), mask=decay_mask))
  if config.clip_value > 0:
    chain.append(optax.clip(float(config.clip_value)))
  if config.clip_global_norm > 0:
    chain.append(optax.clip_by_global_norm(float(config.clip_global_norm)))
  chain.append(_with_learning_rate(factory,
                                   make_schedule(config, updates_total)))
  tx = optax.chain(*chain)
  if config.name == "sam":
    # Opaque mode: the ascent step and the outer update happen inside one `update`,
    # so the train step (and its BatchNorm statistics) runs once per SAM step.
    ascent = optax.chain(optax.contrib.normalize(), optax.sgd(float(config.rho)))
    tx = optax.contrib.sam(tx, ascent, sync_period=2, opaque_mode=True)
  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
  return tx


def _update_rule(config: ml_collections.ConfigDict
                 ) -> Callable[[jax.Array], optax.GradientTransformation]:
  """``lr -> optax alias(lr) + decoupled weight decay`` for the (base) optimizer."""
  name = base_name(config)
  alias = _alias_fn(name)
  params = _alias_params(name)
  kwargs = dict(_NAMED[name][1]) if name in _NAMED else {}
  for key in ("momentum", "b1", "b2", "eps"):
    if config[key] is not None:
      kwargs[key] = float(config[key])

  wd = config.weight_decay
  wd = default_weight_decay(name) if wd is None else float(wd)
  outer_wd = 0.0
  if name in _DECAY_INSIDE:
    kwargs["weight_decay"] = wd
    kwargs[_DECAY_INSIDE[name]] = decay_mask
  else:
    # AdamW-style decay is done below, identically but masked; optimizers
    # that fold decay into their moments (novograd) get the decoupled form.
    if "weight_decay" in params:
      kwargs["weight_decay"] = 0.0
    if "weight_decay_rate" in params:
      kwargs["weight_decay_rate"] = None
    outer_wd = wd

  def factory(lr: jax.Array) -> optax.GradientTransformation:
    tx = alias(learning_rate=lr, **kwargs)
    if outer_wd > 0:
      # update -= lr * wd * w (Loshchilov & Hutter 2019, torch AdamW).
      tx = optax.chain(tx, optax.add_decayed_weights(-lr * outer_wd,
                                                     mask=decay_mask))
    return tx

  return factory


def needs_grad_fn(opt_state: optax.OptState) -> bool:
  """Whether `update` of the optimizer owning ``opt_state`` needs ``grad_fn=`` (SAM).

  ``grad_fn(params, i) -> gradient`` of the same batch's loss at other parameters.
  """
  is_sam = lambda x: isinstance(x, optax.contrib.SAMState)
  return any(is_sam(x) for x in jax.tree.leaves(opt_state, is_leaf=is_sam))
