"""Loss-landscape slices: filter-normalised random directions, grids evaluated in a vmap.

A slice is a function of a few coordinates ``c``: ``f(theta + sum_k c_k d_k)``. This module
makes the directions and evaluates ``f`` on a grid of coordinates, any number of points at
a time (one compiled ``vmap`` over a chunk of points, the chunks run from the host):

* `filter_normalized_direction`: a Gaussian direction whose every filter (the slice of a
  kernel producing one output channel or unit) is rescaled to the norm of the same filter
  of ``theta`` (Li et al. 2018). This removes the scale invariance ReLU/BatchNorm networks
  have, so that slices of different networks compare. Biases and BatchNorm scales and
  offsets (every parameter with fewer than 2 dimensions) get a zero direction by default,
  as in Li et al.'s code (their ``--xignore biasbn``, tomgoldstein/loss-landscape issue 25):
  a random direction on a one-element "filter" has the norm of the parameter itself and
  easily flips a BatchNorm scale's sign. ``include_bias_bn=True`` gives them a Gaussian
  direction rescaled to the whole vector's norm.
* `evaluate`: ``fn`` on ``theta + coords @ directions`` for a ``[P, K]`` array of
  coordinates, e.g. a 1-D line (K = 1), a 2-D grid (K = 2), the line between two
  solutions (one direction ``theta_b - theta_a``), or the top Hessian eigenvector.

References:
  Li, Xu, Taylor, Studer & Goldstein, "Visualizing the loss landscape of neural nets",
  NeurIPS 2018.
  Goodfellow, Vinyals & Saxe, "Qualitatively characterizing neural network optimization
  problems", ICLR 2015 (linear interpolation between solutions).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["evaluate", "filter_normalized_direction", "grid", "line_between"]

Tree = Any


def filter_normalized_direction(key: jax.Array, params: Tree, *,
                                include_bias_bn: bool = False) -> Tree:
  """A random direction like ``params``, each filter scaled to the norm of ``params``'.

  Filters are the slices along a kernel's last axis (output channels of an HWIO conv
  kernel, output units of an ``[in, out]`` dense kernel): for ``d`` Gaussian,
  ``d_f <- d_f * ||theta_f|| / ||d_f||``.

  Args:
    key: the direction's randomness (one fold per leaf).
    params: the parameters ``theta`` (pytree of float arrays).
    include_bias_bn: give parameters with ``ndim < 2`` a direction too (rescaled as one
      vector); by default theirs is zero.

  Returns:
    A pytree like ``params``.

  Examples:
    >>> theta = {"kernel": jnp.array([[3.0, 0.0], [4.0, 1.0]]), "bias": jnp.ones(2)}
    >>> d = filter_normalized_direction(jax.random.key(0), theta)
    >>> np.round(jnp.linalg.norm(d["kernel"], axis=0), 5).tolist(), d["bias"].tolist()
    ([5.0, 1.0], [0.0, 0.0])
  """
  leaves, treedef = jax.tree.flatten(params)
  out = []
  for i, theta in enumerate(leaves):
    theta = jnp.asarray(theta)
    d = jax.random.normal(jax.random.fold_in(key, i), theta.shape, jnp.float32)
    if theta.ndim >= 2:
      axes = tuple(range(theta.ndim - 1))
      d = d * _norm(theta, axes) / jnp.maximum(_norm(d, axes), jnp.finfo(jnp.float32).tiny)
    elif include_bias_bn:
      d = d * _norm(theta, None) / jnp.maximum(_norm(d, None), jnp.finfo(jnp.float32).tiny)
    else:
      d = jnp.zeros_like(d)
    out.append(d.astype(theta.dtype))
  return jax.tree.unflatten(treedef, out)


def _norm(x: jax.Array, axes) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes))


def line_between(a: Tree, b: Tree) -> Tree:
  """The direction ``b - a``: ``a + alpha (b - a)`` is ``a`` at 0 and ``b`` at 1."""
  return jax.tree.map(lambda x, y: jnp.asarray(y) - jnp.asarray(x), a, b)


def grid(span: float, points: int, dims: int) -> np.ndarray:
  """``[points ** dims, dims]`` coordinates of a regular grid on ``[-span, span] ** dims``,
  the last coordinate fastest.

  Examples:
    >>> grid(1.0, 3, 2)[:4].tolist()
    [[-1.0, -1.0], [-1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]]
  """
  axis = np.linspace(-span, span, points)
  mesh = np.meshgrid(*([axis] * dims), indexing="ij")
  return np.stack([m.ravel() for m in mesh], axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _chunk(fn, base, directions, coords, args):
  def at(c):
    moved = jax.tree.map(lambda x, *ds: x + sum(ci * d for ci, d in zip(c, ds)).astype(x.dtype),
                         base, *directions)
    return fn(moved, *args)
  return jax.vmap(at)(coords)


def evaluate(fn: Callable[..., Tree], base: Tree, directions: Sequence[Tree],
             coords: np.ndarray, *, args: Sequence[Any] = (), chunk: int = 16) -> Tree:
  """``fn(base + sum_k coords[p, k] * directions[k], *args)`` for every row ``p``.

  Args:
    fn: ``(point, *args) -> pytree of arrays``; the same Python object for every call that
      should reuse the compiled program.
    base: the centre (any pytree, e.g. ``{"params": ..., "batch_stats": ...}``).
    directions: K pytrees like ``base``.
    coords: ``[P, K]``.
    args: passed to ``fn`` as arguments of the compiled program (e.g. the data), not
      folded into it as constants.
    chunk: points per compiled call (vmapped); the last chunk is padded with the centre.

  Returns:
    ``fn``'s outputs stacked along a leading ``P`` axis, as host numpy arrays.

  Examples:
    >>> f = lambda w: jnp.sum(w["x"] ** 2)
    >>> evaluate(f, {"x": jnp.zeros(2)}, [{"x": jnp.array([1.0, 0.0])}],
    ...          np.array([[-1.0], [0.0], [2.0]]), chunk=2).tolist()
    [1.0, 0.0, 4.0]
  """
  coords = np.asarray(coords, np.float32)
  if coords.ndim != 2 or coords.shape[1] != len(directions):
    raise ValueError(f"coords must be [points, {len(directions)}] (one column per direction), "
                     f"got shape {coords.shape}")
  parts = []
  for first in range(0, len(coords), chunk):
    block = coords[first:first + chunk]
    padded = np.concatenate([block, np.zeros((chunk - len(block), block.shape[1]), np.float32)])
    out = jax.device_get(_chunk(fn, base, tuple(directions), jnp.asarray(padded), tuple(args)))
    parts.append(jax.tree.map(lambda x, n=len(block): np.asarray(x)[:n], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
