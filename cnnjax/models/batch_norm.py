"""Training-mode BatchNorm as one op with a hand-written gradient.

`normalize(x, scale, bias, groups=G, epsilon=eps)` returns ``(y, mean, var)``:
the batch [N, ..., C] split into G equal contiguous groups (ghost batches; G = 1 is
plain BatchNorm), each normalized over every axis but the last with its own mean and
biased variance (two passes: no E[x^2] - E[x]^2 cancellation), then scaled and
shifted. ``mean`` and ``var`` are [G, 1, ..., 1, C], for the running averages.

The gradient is the closed form (Ioffe & Szegedy 2015, section 3), per group of
M = N/G * H * W values per channel, with x^ = (x - mean) * rstd:

    dbias  = sum(dy)        dscale = sum(dy * x^)
    dx     = scale * rstd * (dy - (dbias_g + x^ * dscale_g) / M)

so the backward pass is two reductions that read (x, dy) once and one elementwise
pass, with x (the convolution's output, already stored) as the only large residual.
XLA's own derivative of the two-pass forward differentiates through both passes
(the mean into the variance into the scale); on the 2-core CPU the closed form made
resnet20's train step ~10 % faster (docs/performance.md). The statistics are
outputs without a gradient (they only feed the running averages); values and
gradients equal the autodiff of the plain formula to float32 rounding
(tests/test_models.py).

Synchronized BatchNorm (statistics averaged over a device axis) keeps the plain
formula and its autodiff in `cnnjax.models.layers.BatchNorm`, which calls this
only without an ``axis_name``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _grouped(x: jax.Array, groups: int) -> tuple[jax.Array, tuple[int, ...]]:
  xg = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
  return xg, tuple(range(1, xg.ndim - 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _normalize(x, scale, bias, groups, epsilon):
  xg, axes = _grouped(x, groups)
  mean = xg.mean(axis=axes, keepdims=True)
  var = jnp.square(xg - mean).mean(axis=axes, keepdims=True)
  y = (xg - mean) * (scale * lax.rsqrt(var + epsilon)) + bias
  return y.reshape(x.shape), mean, var


def _normalize_fwd(x, scale, bias, groups, epsilon):
  y, mean, var = _normalize(x, scale, bias, groups, epsilon)
  return (y, mean, var), (x, scale, mean, lax.rsqrt(var + epsilon))


def _normalize_bwd(groups, epsilon, residuals, cotangents):
  del epsilon
  x, scale, mean, rstd = residuals
  dy = cotangents[0]  # mean and var feed only the running averages: no gradient
  xg, axes = _grouped(x, groups)
  dyg = dy.reshape(xg.shape)
  xhat = (xg - mean) * rstd
  sum_dy = dyg.sum(axis=axes, keepdims=True)
  sum_dy_xhat = (dyg * xhat).sum(axis=axes, keepdims=True)
  count = xg[0].size // x.shape[-1]
  dx = (scale * rstd) * (dyg - (sum_dy + xhat * sum_dy_xhat) / count)
  channels = x.shape[-1]
  dscale = sum_dy_xhat.reshape(groups, channels).sum(0)
  dbias = sum_dy.reshape(groups, channels).sum(0)
  return dx.reshape(x.shape), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, *, groups: int = 1,
              epsilon: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode BatchNorm of x [N, ..., C] in G groups: (y, mean, var); see the module doc.

  ``x`` is normalized in its own dtype (callers pass float32); ``scale`` and ``bias``
  are [C]. N must be divisible by ``groups``.

  Example:
    >>> x = jnp.array([[1.0], [3.0]])
    >>> y, mean, var = normalize(x, jnp.ones(1), jnp.zeros(1))
    >>> [round(float(v), 4) for v in y[:, 0]], float(mean[0, 0, 0]), float(var[0, 0, 0])
    ([-1.0, 1.0], 2.0, 1.0)
  """
  if groups < 1 or x.shape[0] % groups:
    raise ValueError(f"groups={groups} must be >= 1 and divide the batch size ({x.shape[0]})")
  y, mean, var = _normalize(x, scale, bias, int(groups), float(epsilon))
  return y, lax.stop_gradient(mean), lax.stop_gradient(var)
