"""Layer tables and activation statistics for any cnnjax model.

Both are read off the model itself with Flax's ``capture_intermediates`` (every
submodule's ``__call__`` output), so nothing here re-implements a network.
The layer table needs only shapes: it runs under ``jax.eval_shape`` and costs no
arithmetic.

FLOPs convention: 2 x multiply-adds of convolutions and dense layers, per example
(one image), forward pass only. Bias additions, BatchNorm, activations and
pooling are not counted (they are O(activations), small next to the convs).
A conv with output [H', W', cout] and kernel [kh, kw, cin, cout] has
``2 * H' * W' * kh * kw * cin * cout`` FLOPs; a dense layer [in, out] has
``2 * in * out``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_MATMUL_KINDS = ("Conv", "Dense")


@dataclasses.dataclass(frozen=True)
class LayerRow:
  """One module of a model.

  Attributes:
    path: '/'-joined submodule names, e.g. 'stage2_block1/conv1'.
    kind: the module's class name ('Conv', 'BatchNorm', 'BasicBlock', ...).
    output_shape: output shape of one example (batch axis dropped).
    params: parameters owned directly by this module (not its children).
    flops: forward FLOPs per example (see the module docstring).
    depth: nesting depth (1 = a direct child of the model).
  """
  path: str
  kind: str
  output_shape: tuple[int, ...]
  params: int
  flops: int
  depth: int


@dataclasses.dataclass(frozen=True)
class ActivationRow:
  """Statistics of one module's output over a batch."""
  path: str
  kind: str
  output_shape: tuple[int, ...]
  mean: float
  std: float
  fraction_zero: float


def _capture(model: nn.Module, variables: Mapping[str, Any], x: jax.Array, train: bool,
             rngs: Mapping[str, jax.Array] | None):
  """Applies ``model``; returns (logits, intermediates, {path: class name})."""
  # Insertion order of `kinds` is call order (pytree dicts come back sorted).
  kinds: dict[tuple[str, ...], str] = {}

  def record(module: nn.Module, method_name: str) -> bool:
    if method_name != "__call__":
      return False
    kinds.setdefault(tuple(module.path), type(module).__name__)
    return True

  mutable = ["intermediates"] + (["batch_stats"] if train and "batch_stats" in variables else [])
  logits, state = model.apply(variables, x, train=train, rngs=rngs,
                              capture_intermediates=record, mutable=mutable)
  return logits, state["intermediates"], kinds


def _walk(intermediates: Mapping[str, Any], kinds: Mapping[tuple[str, ...], str]):
  """Yields (path, first output) of every submodule, parents before children.

  ``kinds`` lists modules in the order their calls returned (children before
  their parent); a parent is moved just before its first child.
  """
  order = {path: i for i, path in enumerate(kinds)}
  first = {p: min(i for q, i in order.items() if q[:len(p)] == p) for p in order}
  for path in sorted(order, key=lambda p: (first[p], len(p))):
    if path:  # the model itself: its totals are the sums of the rows
      yield path, _subtree(intermediates, path)["__call__"][0]


def _subtree(tree: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
  for key in path:
    tree = tree.get(key, {}) if isinstance(tree, Mapping) else {}
  return tree if isinstance(tree, Mapping) else {}


def _own_leaves(tree: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in tree.items() if not isinstance(v, Mapping)}


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _flops(kind: str, out_shape: tuple[int, ...], own: Mapping[str, Any]) -> int:
  if kind not in _MATMUL_KINDS or "kernel" not in own:
    return 0
  kernel = tuple(own["kernel"].shape)
  # Conv: one multiply-add per kernel weight per output pixel (out_shape[:-1] =
  # [H', W']); Dense: per leading position (just 1 after a flatten).
  positions = math.prod(out_shape[:-1])
  return 2 * positions * math.prod(kernel)


def layer_table(model: nn.Module, input_shape: Sequence[int], *,
                variables: Mapping[str, Any] | None = None) -> list[LayerRow]:
  """One `LayerRow` per submodule call of ``model`` on one [H, W, C] image.

  Args:
    model: an unbound cnnjax (or any Flax) model called as ``model(x, train=...)``.
    input_shape: (H, W, C) of one example.
    variables: the model's variables; by default their shapes from ``init``.

  Returns:
    Rows in call order, parents before children. ``sum(r.params)`` is the total
    parameter count; ``sum(r.flops)`` the forward FLOPs per example.

  Example:
    >>> from cnnjax import models
    >>> rows = layer_table(models.get_model("keras_cifar_cnn", num_classes=10), (32, 32, 3))
    >>> rows[0].path, rows[0].output_shape, rows[0].params, rows[0].flops
    ('conv1', (30, 30, 32), 896, 1555200)
    >>> sum(r.params for r in rows)
    122570
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  if variables is None:
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  kinds: dict[tuple[str, ...], str] = {}

  def captured(variables, x):
    _, inter, k = _capture(model, variables, x, train=False, rngs=None)
    kinds.update(k)
    return inter

  intermediates = jax.eval_shape(captured, variables, x)
  params = variables.get("params", {})
  rows = []
  for path, out in _walk(intermediates, kinds):
    own = _own_leaves(_subtree(params, path))
    kind = kinds.get(path, "?")
    shape = tuple(out.shape[1:])
    rows.append(LayerRow("/".join(path), kind, shape, count_params(own),
                         _flops(kind, shape, own), len(path)))
  return rows


def format_table(rows: Sequence[LayerRow], *, batch_stats: int | None = None) -> str:
  """``rows`` as a text table (`cnnjax.reporting.table`) with a totals line."""
  from cnnjax.reporting import table  # pylint: disable=g-import-not-at-top
  cells = [["  " * (r.depth - 1) + r.path.split("/")[-1], r.kind,
            "x".join(str(d) for d in r.output_shape), r.params, r.flops] for r in rows]
  cells.append(["total", "", "", sum(r.params for r in rows), sum(r.flops for r in rows)])
  lines = [table(cells, ["layer", "type", "output shape", "params", "FLOPs"],
                 align=["left", "left", "left", "right", "right"]),
           "FLOPs: 2 x multiply-adds of conv and dense layers, forward, per example."]
  if batch_stats:
    lines.append(f"Plus {batch_stats:,} BatchNorm running statistics (not trained).")
  return "\n".join(lines)


def activation_stats(model: nn.Module, variables: Mapping[str, Any], x: jax.Array, *,
                     train: bool = False,
                     rngs: Mapping[str, jax.Array] | None = None) -> list[ActivationRow]:
  """Mean, std and fraction of exact zeros of every submodule's output on batch ``x``.

  Args:
    model: the model.
    variables: its variables (e.g. from ``model.init``).
    x: images [N, H, W, C].
    train: run in training mode (BatchNorm uses batch statistics; dropout then
      needs ``rngs={'dropout': key}``).
    rngs: extra rngs for ``apply``.

  Returns:
    One row per submodule call, parents before children, statistics over the
    whole output (batch included).
  """
  kinds: dict[tuple[str, ...], str] = {}

  def captured(variables, x, rngs):
    _, inter, k = _capture(model, variables, x, train=train, rngs=rngs)
    kinds.update(k)
    return inter

  # One compiled program instead of one dispatch per operation.
  intermediates = jax.jit(captured)(variables, x, rngs)
  rows = []
  for path, out in _walk(intermediates, kinds):
    out = np.asarray(out, dtype=np.float64)
    rows.append(ActivationRow("/".join(path), kinds.get(path, "?"), tuple(out.shape[1:]),
                              float(out.mean()), float(out.std()), float((out == 0).mean())))
  return rows


def format_activations(rows: Sequence[ActivationRow]) -> str:
  """Activation statistics as a text table (`cnnjax.reporting.table`)."""
  from cnnjax.reporting import table  # pylint: disable=g-import-not-at-top
  cells = [[r.path, r.kind, "x".join(str(d) for d in r.output_shape), f"{r.mean:.4f}",
            f"{r.std:.4f}", f"{r.fraction_zero:.1%}"] for r in rows]
  return table(cells, ["layer", "type", "output shape", "mean", "std", "zero"],
               align=["left", "left", "left", "right", "right", "right"])


def parse_shape(values: Sequence[str]) -> tuple[int, int, int]:
  """Parses ['32', '32', '3'] into (32, 32, 3); anything else raises ValueError."""
  try:
    shape = tuple(int(v) for v in values)
  except ValueError:
    shape = ()
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"--input_shape must be three positive integers H,W,C, got {values!r}")
  return shape  # type: ignore[return-value]
