"""Curvature of a loss: Hessian-vector products, top eigenvalues, trace, spectral density.

Everything here is a transformation of ``loss_fn: params -> scalar`` (any pytree of
float parameters), built on one primitive, the Hessian-vector product computed
forward-over-reverse, ``jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]``:

* `hvp`: ``H v``;
* `top_eigenvalues` / `top_eigenpairs`: the largest eigenvalues of ``H`` (Lanczos with
  full reorthogonalisation);
* `hessian_trace`: ``tr(H)`` (Hutchinson's estimator with Rademacher probes, vmapped);
* `spectral_density`: the eigenvalue density of ``H`` (stochastic Lanczos quadrature,
  Ghorbani et al. 2019): Gauss nodes and weights, the weights of each run summing to 1;
* `preconditioned_top_eigenvalue`: the top eigenvalue of ``P^(-1/2) H P^(-1/2)`` for a
  diagonal preconditioner ``P``, e.g. Adam's from its state (`adam_preconditioner`;
  Cohen et al. 2022);
* `gradient_noise_scale`: McCandlish et al. (2018)'s ``B_simple = tr(Sigma) / |G|^2`` from
  per-example (or per-group) gradients, vmapped.

Each function exists at two levels: on a loss (the signatures above), and on a linear
operator (``*_of``: a ``matvec`` mapping ``[R, n]`` flat vectors to ``[R, n]``), so that a
caller who compiled its own Hessian-vector product, such as the training diagnostics
(`cnnjax.training.diagnostics`), reuses the same algorithms.

**Why the iterations run on the host.** Lanczos is a loop of dependent matrix-vector
products. Inside `lax.fori_loop` on XLA:CPU a convolutional network's Hessian-vector
product ran ~20x slower than the same compiled product called from Python (bn_cnn,
256 digits: 4.1 s vs 82 s for 20 products), so each iteration calls a compiled product
and a compiled, fixed-shape reorthogonalisation step. The loss-level functions compile
their product once per call (``jax.closure_convert`` lifts the arrays ``loss_fn`` closes
over into arguments, so they are not baked into the program as constants).

**BatchNorm.** A loss that runs BatchNorm must say which statistics it uses; these
functions only see ``params -> scalar``. `cnnjax.training.diagnostics.loss_function`
builds the loss of a run with an explicit ``batch_stats_mode``: ``"train"`` (the
statistics of the given batch: the training loss) or ``"eval"`` (the running averages,
the function the model computes at test time). Nothing here switches it.

**Convolutions.** Forward-mode differentiation needs ops that have a JVP rule; the
CPU-tuned ``"hybrid"`` and ``"matmul"`` formulations of `cnnjax.models.fast_ops` define
only a reverse-mode rule. Losses for these functions use the ``"lax"`` formulation
(same parameters, same values), as `cnnjax.training.diagnostics` does.

Example (a quadratic, whose Hessian is known):

  >>> a = jnp.array([[3.0, 1.0], [1.0, 2.0]])
  >>> loss = lambda w: 0.5 * w["x"] @ a @ w["x"]
  >>> w = {"x": jnp.zeros(2)}
  >>> hvp(loss, w, {"x": jnp.array([1.0, 0.0])})["x"]
  Array([3., 1.], dtype=float32)
  >>> [round(float(x), 4) for x in top_eigenvalues(loss, w, k=2, num_iterations=2,
  ...                                               key=jax.random.key(0))]
  [3.618, 1.382]

References:
  Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 1994.
  Golub & Van Loan, "Matrix Computations", 4th ed., sections 10.1-10.3 (Lanczos).
  Hutchinson, "A stochastic estimator of the trace of the influence matrix", 1990.
  Ghorbani, Krishnan & Xiao, "An investigation into neural net optimization via Hessian
  eigenvalue density", ICML 2019.
  Yao, Gholami, Keutzer & Mahoney, "PyHessian: neural networks through the lens of the
  Hessian", 2020.
  Cohen, Ghorbani, Krishnan, Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl &
  Gilmer, "Adaptive gradient methods at the edge of stability", 2022.
  McCandlish, Kaplan, Amodei et al., "An empirical model of large-batch training", 2018.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

__all__ = [
    "Lanczos", "adam_preconditioner", "flat_hvp", "gradient_noise_scale", "hessian_trace",
    "hessian_trace_of", "hvp", "lanczos", "preconditioned_top_eigenvalue", "smoothed_density",
    "spectral_density", "spectral_density_of", "top_eigenpairs", "top_eigenpairs_of",
    "top_eigenvalues",
]

Params = Any
LossFn = Callable[[Params], jax.Array]
MatVec = Callable[[jax.Array], jax.Array]  # [R, n] -> [R, n]

# Lanczos stops extending a Krylov space whose new direction is this small relative to
# ||A q||: the space is (numerically) invariant, and the next vector is a fresh random one.
_BREAKDOWN = 1e-5
# Probes per compiled Hutchinson product: bounds the memory of the vmapped tangents.
_TRACE_CHUNK = 16


def hvp(loss_fn: LossFn, params: Params, vector: Params) -> Params:
  """The Hessian-vector product ``H(params) @ vector``, forward-over-reverse.

  Args:
    loss_fn: ``params -> scalar``, twice differentiable.
    params: where the Hessian is taken (a pytree of float arrays).
    vector: a pytree of the structure and shapes of ``params``.

  Returns:
    ``H v``, a pytree like ``params``. Costs about one gradient evaluation plus its
    forward-mode tangent (Pearlmutter 1994).

  Examples:
    >>> hvp(lambda w: jnp.sum(w ** 3), jnp.array([1.0, 2.0]), jnp.array([1.0, 1.0]))
    Array([ 6., 12.], dtype=float32)
  """
  return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def flat_hvp(loss_fn: LossFn, params: Params) -> tuple[MatVec, Callable[[jax.Array], Params]]:
  """A compiled ``[R, n] -> [R, n]`` Hessian product on flattened parameters, and `unravel`.

  ``n`` is the number of parameters; row ``r`` of the input is a flat vector in the order
  of `jax.flatten_util.ravel_pytree`. The arrays ``loss_fn`` closes over become
  arguments of the compiled program (``jax.closure_convert``), so a large batch is not
  folded into it as a constant, and calls with the same ``loss_fn`` object and shapes
  share one compiled program.
  """
  _, unravel = ravel_pytree(params)
  converted, consts = jax.closure_convert(loss_fn, params)
  return (lambda vectors: _flat_products(converted, params, consts, vectors)), unravel


@functools.partial(jax.jit, static_argnums=0)
def _flat_products(converted, params, consts, vectors):
  flat, unravel = ravel_pytree(params)

  def one(v):
    return ravel_pytree(hvp(lambda q: converted(q, *consts), params, unravel(v)))[0]

  return jax.vmap(one)(vectors.astype(flat.dtype))


# --------------------------------------------------------------------------- Lanczos


class Lanczos(NamedTuple):
  """R independent Lanczos runs of m steps on an operator of size n.

  Attributes:
    alphas: float64 ``[R, m]``, the diagonal of each tridiagonal ``T``.
    betas: float64 ``[R, m - 1]``, its off-diagonal (0 where a run restarted).
    basis: ``[R, m, n]``, orthonormal Lanczos vectors (rows), ``Q^T A Q = T``.
  """
  alphas: np.ndarray
  betas: np.ndarray
  basis: jax.Array

  def tridiagonal(self) -> np.ndarray:
    """``[R, m, m]`` float64 tridiagonal matrices."""
    r, m = self.alphas.shape
    t = np.zeros((r, m, m))
    idx = np.arange(m)
    t[:, idx, idx] = self.alphas
    t[:, idx[:-1], idx[1:]] = self.betas
    t[:, idx[1:], idx[:-1]] = self.betas
    return t


def _orthogonalize(basis: jax.Array, rows: jax.Array, w: jax.Array) -> jax.Array:
  """``w`` minus its projection on the basis rows where ``rows`` is True, done twice.

  Classical Gram-Schmidt applied twice keeps float32 vectors orthogonal to working
  precision ("twice is enough", Giraud et al. 2005).
  """
  for _ in range(2):
    coefficients = jnp.einsum("rmn,rn->rm", basis, w) * rows
    w = w - jnp.einsum("rm,rmn->rn", coefficients, basis)
  return w


@jax.jit
def _lanczos_step(basis, j, w):
  """Given ``w = A q_j`` (``q_j = basis[:, j]``): (basis with q_{j+1}, q_{j+1}, alpha, beta)."""
  m = basis.shape[1]
  q = jax.lax.dynamic_index_in_dim(basis, j, axis=1, keepdims=False)
  alpha = jnp.sum(q * w, axis=-1)
  scale = jnp.linalg.norm(w, axis=-1)
  rows = (jnp.arange(m) <= j)[None, :]
  w = _orthogonalize(basis, rows, w)
  beta = jnp.linalg.norm(w, axis=-1)
  # Breakdown: the Krylov space is invariant. Continue from the coordinate vector the
  # basis covers least (never inside its span), orthogonalised; T splits into blocks.
  covered = jnp.einsum("rmn,m->rn", basis * basis, rows[0].astype(basis.dtype))
  fresh = _orthogonalize(basis, rows, jax.nn.one_hot(jnp.argmin(covered, axis=-1),
                                                     basis.shape[2], dtype=w.dtype))
  ok = beta > _BREAKDOWN * jnp.maximum(scale, jnp.finfo(w.dtype).tiny)
  nxt = jnp.where(ok[:, None], w / jnp.where(ok, beta, 1.0)[:, None],
                  fresh / jnp.linalg.norm(fresh, axis=-1, keepdims=True))
  grown = jax.lax.dynamic_update_index_in_dim(basis, nxt, jnp.minimum(j + 1, m - 1), axis=1)
  return jnp.where(j + 1 < m, grown, basis), nxt, alpha, jnp.where(ok, beta, 0.0)


def lanczos(matvec: MatVec, start: jax.Array, num_iterations: int) -> Lanczos:
  """Lanczos with full reorthogonalisation, ``R`` runs side by side.

  Args:
    matvec: ``[R, n] -> [R, n]``, a symmetric linear operator applied to each row.
    start: ``[R, n]`` starting vectors (normalised here; need not be unit).
    num_iterations: ``m`` steps, ``1 <= m <= n``; the tridiagonal is ``m x m``. A run
      whose Krylov space becomes invariant (breakdown) continues from a fresh orthogonal
      direction with a zero off-diagonal, so every run has exactly ``m`` steps.

  Returns:
    A `Lanczos` with the tridiagonal entries (host float64) and the basis.
  """
  start = jnp.asarray(start, jnp.float32)
  r, n = start.shape
  if not 1 <= num_iterations <= n:
    raise ValueError(f"num_iterations={num_iterations!r} must be in [1, {n}] (the operator "
                     f"has size {n})")
  q = start / jnp.linalg.norm(start, axis=-1, keepdims=True)
  basis = jnp.zeros((r, num_iterations, n), jnp.float32).at[:, 0].set(q)
  alphas, betas = [], []
  for j in range(num_iterations):
    # The step is compiled once for all j (a traced index); so is the caller's matvec.
    basis, q, alpha, beta = _lanczos_step(basis, jnp.int32(j), matvec(q))
    alphas.append(alpha)
    betas.append(beta)
  alphas, betas = jax.device_get((jnp.stack(alphas, -1), jnp.stack(betas, -1)))
  return Lanczos(np.asarray(alphas, np.float64), np.asarray(betas, np.float64)[:, :-1], basis)


def _check_count(name: str, value: Any, low: int = 1) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{name}={value!r} must be an integer >= {low}")


def top_eigenpairs_of(matvec: MatVec, start: jax.Array, *, k: int,
                      num_iterations: int) -> tuple[jax.Array, jax.Array]:
  """The ``k`` largest Ritz pairs of one Lanczos run from ``start`` (``[n]``).

  Returns:
    values float32 ``[k]`` (largest first) and unit vectors ``[k, n]``.
  """
  _check_count("k", k)
  if k > num_iterations:
    raise ValueError(f"k={k} must be <= num_iterations={num_iterations}")
  run = lanczos(matvec, start[None], num_iterations)
  values, vectors = np.linalg.eigh(run.tridiagonal()[0])
  top = np.argsort(values)[::-1][:k]
  ritz = jnp.asarray(vectors[:, top].T, jnp.float32) @ run.basis[0]
  return jnp.asarray(values[top], jnp.float32), ritz


def top_eigenpairs(loss_fn: LossFn, params: Params, *, k: int, num_iterations: int,
                   key: jax.Array) -> tuple[jax.Array, Params]:
  """The ``k`` largest eigenvalues of the Hessian and their eigenvectors.

  Args:
    loss_fn: ``params -> scalar``.
    params: where the Hessian is taken.
    k: how many, ``k <= num_iterations``.
    num_iterations: Lanczos steps (Hessian-vector products), at most the parameter
      count. The top eigenvalues converge first: 20-30 steps give the largest few of a
      network's Hessian to a few digits; ``num_iterations = n`` is exact.
    key: the random start, ``jax.random.normal(key, (n,))``.

  Returns:
    ``(values, vectors)``: float32 ``[k]``, largest first (Ritz values: each is at most
    the true eigenvalue, up to rounding), and a pytree like ``params`` whose leaves
    have a leading axis ``k`` (unit Ritz vectors).
  """
  matvec, unravel = flat_hvp(loss_fn, params)
  n = ravel_pytree(params)[0].size
  start = jax.random.normal(key, (n,), jnp.float32)
  values, vectors = top_eigenpairs_of(matvec, start, k=k, num_iterations=num_iterations)
  return values, jax.vmap(unravel)(vectors)


def top_eigenvalues(loss_fn: LossFn, params: Params, *, k: int, num_iterations: int,
                    key: jax.Array) -> jax.Array:
  """The ``k`` largest eigenvalues of the Hessian of ``loss_fn`` at ``params``, largest first.

  Lanczos with full reorthogonalisation (see `top_eigenpairs` for the arguments).

  Returns:
    float32 ``[k]``.

  Examples:
    >>> loss = lambda w: 0.5 * jnp.sum(jnp.array([4.0, 1.0, 2.0]) * w ** 2)
    >>> values = top_eigenvalues(loss, jnp.ones(3), k=2, num_iterations=3, key=jax.random.key(1))
    >>> np.round(values, 4).tolist()
    [4.0, 2.0]
  """
  return top_eigenpairs(loss_fn, params, k=k, num_iterations=num_iterations, key=key)[0]


# ---------------------------------------------------------------------- trace, density


@functools.partial(jax.jit, static_argnums=2)
def _probes(key: jax.Array, index: jax.Array, n: int) -> jax.Array:
  """``[len(index), n]``: row i is ``rademacher(fold_in(key, index[i]), (n,))``."""
  return jax.vmap(lambda i: jax.random.rademacher(jax.random.fold_in(key, i), (n,),
                                                  jnp.float32))(index)


def hessian_trace_of(matvec: MatVec, n: int, *, num_samples: int, key: jax.Array,
                     chunk: int = _TRACE_CHUNK) -> jax.Array:
  """Hutchinson's ``mean_s v_s^T A v_s`` over Rademacher probes; probe s is
  ``rademacher(fold_in(key, s), (n,))``, ``chunk`` of them per (vmapped) call."""
  _check_count("num_samples", num_samples)
  _check_count("chunk", chunk)
  chunk = min(num_samples, chunk)
  total = jnp.zeros((), jnp.float32)
  for first in range(0, num_samples, chunk):
    index = jnp.arange(first, first + chunk)
    probes = _probes(key, index, n) * (index < num_samples)[:, None]  # padding rows are 0
    total = total + jnp.sum(probes * matvec(probes))
  return total / num_samples


def hessian_trace(loss_fn: LossFn, params: Params, *, num_samples: int,
                  key: jax.Array) -> jax.Array:
  """Hutchinson's estimate of ``tr(H)``: the mean of ``v^T H v`` over Rademacher ``v``.

  Unbiased; its variance is ``2 (||H||_F^2 - sum_i H_ii^2) / num_samples``.

  Args:
    loss_fn: ``params -> scalar``.
    params: where the Hessian is taken.
    num_samples: probes (each one Hessian-vector product; vmapped, 16 per call).
    key: probe ``s`` is ``jax.random.rademacher(jax.random.fold_in(key, s), (n,))``.

  Returns:
    float32 scalar.

  Examples:
    >>> loss = lambda w: 0.5 * jnp.sum(jnp.array([4.0, 1.0, 2.0]) * w ** 2)
    >>> float(hessian_trace(loss, jnp.ones(3), num_samples=2, key=jax.random.key(0)))
    7.0
  """
  matvec, _ = flat_hvp(loss_fn, params)
  n = ravel_pytree(params)[0].size
  return hessian_trace_of(matvec, n, num_samples=num_samples, key=key)


def spectral_density_of(matvec: MatVec, n: int, *, num_iterations: int, num_runs: int,
                        key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """Stochastic Lanczos quadrature on an operator; see `spectral_density`."""
  _check_count("num_runs", num_runs)
  probes = _probes(key, jnp.arange(num_runs), n)
  run = lanczos(matvec, probes, num_iterations)
  nodes, vectors = np.linalg.eigh(run.tridiagonal())
  # Gauss quadrature for the measure sum_i (q0 . u_i)^2 delta(lambda_i): weights are the
  # squared first components of T's eigenvectors, which form a unit vector.
  return nodes, vectors[:, 0, :] ** 2


def spectral_density(loss_fn: LossFn, params: Params, *, num_iterations: int, num_runs: int,
                     key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """Gauss nodes and weights of the Hessian's eigenvalue density (stochastic Lanczos
  quadrature, Ghorbani et al. 2019).

  Run ``r`` is ``num_iterations`` Lanczos steps from the unit vector ``q = v / ||v||``,
  ``v = jax.random.rademacher(jax.random.fold_in(key, r), (n,))``; the eigenvalues of its
  tridiagonal are the nodes, and the squared first components of their eigenvectors the
  weights: the Gauss quadrature of ``q^T f(H) q = sum_i (q . u_i)^2 f(lambda_i)``, exact
  for polynomials ``f`` of degree < ``2 * num_iterations``. Averaged over runs this
  estimates ``tr f(H) / n``. The runs share every Hessian-vector product call (vmapped).

  Args:
    loss_fn: ``params -> scalar``.
    params: where the Hessian is taken.
    num_iterations: Lanczos steps per run (nodes per run), at most the parameter count.
    num_runs: independent probes.
    key: the probes.

  Returns:
    ``(nodes, weights)``, float64 numpy ``[num_runs, num_iterations]``; each run's weights
    sum to 1 (to rounding). `smoothed_density` turns them into a curve.

  Examples:
    >>> loss = lambda w: 0.5 * jnp.sum(jnp.array([4.0, 1.0, 2.0]) * w ** 2)
    >>> nodes, weights = spectral_density(loss, jnp.ones(3), num_iterations=3, num_runs=2,
    ...                                   key=jax.random.key(0))
    >>> np.round(nodes, 4).tolist(), np.round(weights.sum(axis=1), 6).tolist()
    ([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]], [1.0, 1.0])
  """
  matvec, _ = flat_hvp(loss_fn, params)
  n = ravel_pytree(params)[0].size
  return spectral_density_of(matvec, n, num_iterations=num_iterations, num_runs=num_runs,
                             key=key)


def smoothed_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, *,
                     sigma: float) -> np.ndarray:
  """``(1 / R) sum_r sum_j w_rj N(grid; node_rj, sigma^2)``: a density that integrates to 1.

  Examples:
    >>> density = smoothed_density(np.array([[0.0]]), np.array([[1.0]]),
    ...                            np.linspace(-5, 5, 1001), sigma=1.0)
    >>> round(float(np.sum(density) * 0.01), 4)
    1.0
  """
  if not sigma > 0:
    raise ValueError(f"sigma={sigma!r} must be > 0")
  grid = np.asarray(grid, np.float64)[:, None, None]
  gauss = np.exp(-0.5 * ((grid - nodes[None]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
  return np.sum(gauss * weights[None], axis=(1, 2)) / nodes.shape[0]


# ----------------------------------------------------------------- preconditioned


def adam_preconditioner(opt_state: optax.OptState, *, b2: float, eps: float) -> Params:
  """Adam's diagonal preconditioner ``P = sqrt(nu / (1 - b2^t)) + eps`` from its state.

  Finds the one `optax.ScaleByAdamState` anywhere in ``opt_state`` (a `cnnjax.optimizers`
  chain wraps it in its learning-rate and weight-decay layers), whose ``nu`` is the
  second-moment estimate after ``t = count`` updates. The next Adam update is
  ``-lr * m_hat / P`` (Cohen et al. 2022, eq. 2), so ``P^(-1) H`` is the Hessian the
  preconditioned iteration sees.

  Args:
    opt_state: an optimizer state holding exactly one `optax.ScaleByAdamState` (adam,
      adamw, nadam, nadamw).
    b2, eps: the optimizer's own (not stored in the state).

  Returns:
    A pytree like the parameters (all NaN before the first update, ``t = 0``, when
    there is no second-moment estimate yet); one vector in the parameters' ravel order
    for a `switched` state built with ``flat=True``.

  Raises:
    ValueError: ``opt_state`` holds no or several Adam states.
  """
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(x)]
  if len(found) != 1:
    raise ValueError(f"opt_state holds {len(found)} optax.ScaleByAdamState (expected 1): the "
                     "preconditioned sharpness is defined for adam, adamw, nadam and nadamw")
  state = found[0]
  correction = 1.0 - jnp.asarray(b2, jnp.float32) ** state.count.astype(jnp.float32)
  nan = jnp.where(state.count > 0, 1.0, jnp.nan)
  return jax.tree.map(lambda nu: nan * (jnp.sqrt(nu / correction) + eps), state.nu)


def preconditioned_top_eigenvalue(loss_fn: LossFn, params: Params, preconditioner: Params, *,
                                  num_iterations: int, key: jax.Array) -> jax.Array:
  """The top eigenvalue of ``P^(-1/2) H P^(-1/2)`` (equal to that of ``P^(-1) H``).

  For Adam with ``P`` from `adam_preconditioner`, gradient descent on the quadratic
  model is stable while this is below ``(2 + 2 b1) / ((1 - b1) lr)`` (38 / lr for
  ``b1 = 0.9``; Cohen et al. 2022).

  Args:
    loss_fn: ``params -> scalar``.
    params: where the Hessian is taken.
    preconditioner: positive diagonal ``P``, a pytree like ``params``.
    num_iterations: Lanczos steps.
    key: the random start, ``jax.random.normal(key, (n,))``.

  Returns:
    float32 scalar.

  Examples:
    >>> loss = lambda w: 0.5 * jnp.sum(jnp.array([4.0, 1.0]) * w ** 2)
    >>> value = preconditioned_top_eigenvalue(loss, jnp.ones(2), jnp.array([8.0, 0.25]),
    ...                                       num_iterations=2, key=jax.random.key(0))
    >>> round(float(value), 4)
    4.0
  """
  matvec, _ = flat_hvp(loss_fn, params)
  scale = jax.lax.rsqrt(ravel_pytree(preconditioner)[0].astype(jnp.float32))
  start = jax.random.normal(key, scale.shape, jnp.float32)
  values, _ = top_eigenpairs_of(lambda v: scale * matvec(scale * v), start, k=1,
                                num_iterations=num_iterations)
  return values[0]


# ------------------------------------------------------------------ gradient noise


def gradient_noise_scale(loss_fn: Callable[[Params, Any], jax.Array], params: Params, batch: Any,
                         *, group_size: int = 1) -> dict[str, jax.Array]:
  """McCandlish et al. (2018)'s simple noise scale ``B_simple = tr(Sigma) / |G|^2``.

  The ``B`` examples of ``batch`` are cut into ``B / b`` groups of ``b = group_size``
  consecutive examples, and the gradient of each group's mean loss is computed, vmapped
  (``b = 1``: per-example gradients). With ``g_i`` the group gradients and ``g`` their
  mean, the unbiased estimators of their appendix A (small batch ``b``, big batch ``B``)
  are

    ``|G|^2 ~ (B |g|^2 - b mean_i |g_i|^2) / (B - b)``,
    ``tr(Sigma) ~ (mean_i |g_i|^2 - |g|^2) / (1/b - 1/B)``,

  i.e. ``tr(Sigma) = b tr(C)`` and ``|G|^2 = |g|^2 - tr(C) / (B/b)`` with ``C`` the sample
  covariance of the ``g_i``. ``Sigma`` is the per-example gradient covariance; a model
  whose examples interact (BatchNorm in training mode) defines it through groups of the
  training batch size, whose gradients are those training computes.

  Args:
    loss_fn: ``(params, batch) -> scalar``, the mean loss over a batch (any size).
    params: where the gradients are taken.
    batch: a pytree of arrays with a leading axis ``B``.
    group_size: ``b``, a divisor of ``B`` with ``B / b >= 2``.

  Returns:
    ``{"noise_scale", "trace_sigma", "grad_sq_norm"}``, float32 scalars (the estimators
    are unbiased for ``tr(Sigma)`` and ``|G|^2`` separately, not for their ratio).

  Examples:
    >>> loss = lambda w, b: jnp.mean((b["x"] * w - b["y"]) ** 2)
    >>> batch = {"x": jnp.array([1.0, 2.0, 1.0, 2.0]), "y": jnp.zeros(4)}
    >>> out = gradient_noise_scale(loss, jnp.float32(0.5), batch)  # g_i = x_i^2 = 1, 4, 1, 4
    >>> [round(float(out[k]), 4) for k in ("trace_sigma", "grad_sq_norm", "noise_scale")]
    [3.0, 5.5, 0.5455]
  """
  size = jax.tree.leaves(batch)[0].shape[0]
  _check_count("group_size", group_size)
  if size % group_size or size // group_size < 2:
    raise ValueError(f"group_size={group_size} must divide the batch of {size} examples into "
                     "at least 2 groups")
  groups = jax.tree.map(lambda x: x.reshape(size // group_size, group_size, *x.shape[1:]), batch)
  grads = jax.vmap(lambda part: ravel_pytree(jax.grad(loss_fn)(params, part))[0])(groups)
  grads = grads.astype(jnp.float32)
  big, small = float(size), float(group_size)
  mean_sq = jnp.mean(jnp.sum(grads * grads, axis=-1))
  mean = jnp.mean(grads, axis=0)
  full_sq = jnp.sum(mean * mean)
  grad_sq = (big * full_sq - small * mean_sq) / (big - small)
  trace = (mean_sq - full_sq) / (1.0 / small - 1.0 / big)
  return {"noise_scale": trace / grad_sq, "trace_sigma": trace, "grad_sq_norm": grad_sq}
