"""cnnjax.curvature against dense linear algebra on problems small enough to write down.

References are independent of the code under test: the dense Hessian from
`jax.hessian` (reverse-over-reverse on the flat parameters, not the forward-over-reverse
product the module uses) with `numpy.linalg.eigh` in float64; per-example gradients and
Adam's moments re-derived in numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from cnnjax import curvature


def _mlp_problem(inputs=5, hidden=10, outputs=4, examples=16, seed=0):
  """A tanh MLP with softmax cross-entropy: (loss_fn, params); 5-10-4 has 104 parameters."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  params = {"w1": normal(inputs, hidden) / np.sqrt(inputs), "b1": 0.1 * normal(hidden),
            "w2": normal(hidden, outputs) / np.sqrt(hidden), "b2": jnp.zeros(outputs)}
  x, y = normal(examples, inputs), jnp.asarray(rng.integers(0, outputs, examples))

  def loss_fn(p):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  return loss_fn, params


@pytest.fixture(scope="module")
def problem():
  loss_fn, params = _mlp_problem()
  flat, unravel = ravel_pytree(params)
  dense = np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f))))(flat), np.float64)
  dense = 0.5 * (dense + dense.T)
  values, vectors = np.linalg.eigh(dense)
  return {"loss_fn": loss_fn, "params": params, "flat": flat, "unravel": unravel,
          "dense": dense, "values": values, "vectors": vectors}


def test_hvp_matches_the_dense_hessian(problem):
  v = jnp.asarray(np.random.default_rng(3).normal(size=problem["flat"].shape), jnp.float32)
  got = ravel_pytree(jax.jit(curvature.hvp, static_argnums=0)(
      problem["loss_fn"], problem["params"], problem["unravel"](v)))[0]
  np.testing.assert_allclose(got, problem["dense"] @ np.asarray(v), rtol=1e-4, atol=1e-5)


def test_top_three_eigenpairs_within_a_thousandth(problem):
  n = problem["flat"].size
  assert n == 104
  values, vectors = curvature.top_eigenpairs(problem["loss_fn"], problem["params"], k=3,
                                             num_iterations=40, key=jax.random.key(0))
  dense_top = problem["values"][::-1][:3]
  np.testing.assert_allclose(values, dense_top, rtol=1e-3)
  flat_vectors = jax.vmap(lambda t: ravel_pytree(t)[0])(vectors)
  overlaps = np.abs(np.asarray(flat_vectors, np.float64) @ problem["vectors"][:, ::-1][:, :3])
  np.testing.assert_allclose(np.diag(overlaps), 1.0, atol=1e-2)
  # Lanczos is a compiled loop: same key, same answer.
  again = curvature.top_eigenvalues(problem["loss_fn"], problem["params"], k=3,
                                    num_iterations=40, key=jax.random.key(0))
  np.testing.assert_array_equal(again, values)


def test_hessian_trace_is_hutchinson_on_the_documented_probes(problem):
  n, s = problem["flat"].size, 40
  key = jax.random.key(7)
  got = float(curvature.hessian_trace(problem["loss_fn"], problem["params"], num_samples=s,
                                      key=key))
  probes = np.stack([np.asarray(jax.random.rademacher(jax.random.fold_in(key, i), (n,),
                                                      jnp.float32)) for i in range(s)])
  exact_on_probes = np.mean(np.einsum("si,ij,sj->s", probes, problem["dense"], probes))
  assert got == pytest.approx(exact_on_probes, rel=1e-4)
  # ... and a statistically sound estimate of the true trace (4 standard deviations).
  h = problem["dense"]
  std = np.sqrt(2 * (np.sum(h ** 2) - np.sum(np.diag(h) ** 2)) / s)
  assert abs(got - np.trace(h)) < 4 * std


def test_spectral_density_full_lanczos_is_the_eigendecomposition(problem):
  n, key = problem["flat"].size, jax.random.key(5)
  nodes, weights = curvature.spectral_density(problem["loss_fn"], problem["params"],
                                              num_iterations=n, num_runs=2, key=key)
  assert nodes.shape == weights.shape == (2, n)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
  assert np.all(weights >= 0)
  scale = np.max(np.abs(problem["values"]))
  for r in range(2):
    np.testing.assert_allclose(np.sort(nodes[r]), problem["values"], atol=1e-4 * scale)
    q = np.asarray(jax.random.rademacher(jax.random.fold_in(key, r), (n,), jnp.float32),
                   np.float64) / np.sqrt(n)
    exact = (problem["vectors"].T @ q) ** 2
    # Compare distribution functions: robust to near-equal eigenvalues.
    grid = np.linspace(problem["values"][0] - 1e-3 * scale, problem["values"][-1] + 1e-3 * scale,
                       50)
    cdf = lambda at, w: np.array([w[at <= t].sum() for t in grid])
    np.testing.assert_allclose(cdf(nodes[r], weights[r]), cdf(problem["values"], exact),
                               atol=1e-3)


def test_lanczos_survives_breakdown_on_repeated_eigenvalues():
  # A generic start spans a 3-dimensional Krylov space here: two restarts are needed.
  diagonal = jnp.array([1.0, 1.0, 1.0, 2.0, 2.0, 5.0])
  run = curvature.lanczos(lambda v: v * diagonal, jnp.ones((1, 6)), 6)
  np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(run.tridiagonal()[0])),
                             np.sort(np.asarray(diagonal)), atol=1e-5)
  q = np.asarray(run.basis[0])
  np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-5)
  with pytest.raises(ValueError, match="num_iterations=7 must be in"):
    curvature.lanczos(lambda v: v * diagonal, jnp.ones((1, 6)), 7)


def test_preconditioned_top_eigenvalue_and_adam_preconditioner(problem):
  loss_fn, params = problem["loss_fn"], problem["params"]
  tx = optax.adam(1e-2, b2=0.99, eps=1e-6)

  @jax.jit
  def step(p, state):
    g = jax.grad(loss_fn)(p)
    updates, state = tx.update(g, state, p)
    return optax.apply_updates(p, updates), state, g

  state, p, grads = tx.init(params), params, []
  for _ in range(3):
    p, state, g = step(p, state)
    grads.append(np.asarray(ravel_pytree(g)[0], np.float64))
  # Found anywhere in a nested state, as inside a cnnjax.optimizers chain.
  preconditioner = curvature.adam_preconditioner((optax.EmptyState(), {"inner": state}),
                                                 b2=0.99, eps=1e-6)
  nu = sum((1 - 0.99) * 0.99 ** (2 - i) * g ** 2 for i, g in enumerate(grads))
  expected = np.sqrt(nu / (1 - 0.99 ** 3)) + 1e-6
  np.testing.assert_allclose(ravel_pytree(preconditioner)[0], expected, rtol=1e-5)

  got = curvature.preconditioned_top_eigenvalue(loss_fn, params, preconditioner,
                                                num_iterations=40, key=jax.random.key(2))
  d = 1 / np.sqrt(expected)
  dense = d[:, None] * problem["dense"] * d[None, :]
  assert float(got) == pytest.approx(np.linalg.eigvalsh(dense)[-1], rel=1e-3)
  with pytest.raises(ValueError, match="holds 0 optax.ScaleByAdamState"):
    curvature.adam_preconditioner(optax.sgd(0.1).init(params), b2=0.999, eps=1e-8)
  fresh = curvature.adam_preconditioner(tx.init(params), b2=0.99, eps=1e-6)
  assert np.all(np.isnan(ravel_pytree(fresh)[0]))


@pytest.mark.parametrize("group_size", [1, 2])
def test_gradient_noise_scale_against_numpy(group_size):
  rng = np.random.default_rng(0)
  x, y, w = rng.normal(size=(8, 3)), rng.normal(size=8), rng.normal(size=3)

  def loss_fn(w, batch):
    return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)

  out = curvature.gradient_noise_scale(
      loss_fn, jnp.asarray(w, jnp.float32), {"x": jnp.asarray(x, jnp.float32),
                                             "y": jnp.asarray(y, jnp.float32)},
      group_size=group_size)
  per_example = 2 * (x @ w - y)[:, None] * x          # d/dw (x.w - y)^2
  groups = per_example.reshape(-1, group_size, 3).mean(axis=1)
  covariance = np.cov(groups, rowvar=False, ddof=1)   # of the group means
  trace_sigma = group_size * np.trace(covariance)     # per-example covariance
  grad_sq = np.sum(groups.mean(axis=0) ** 2) - np.trace(covariance) / len(groups)
  assert float(out["trace_sigma"]) == pytest.approx(trace_sigma, rel=1e-4)
  assert float(out["grad_sq_norm"]) == pytest.approx(grad_sq, rel=1e-4)
  assert float(out["noise_scale"]) == pytest.approx(trace_sigma / grad_sq, rel=1e-4)
  with pytest.raises(ValueError, match="group_size=3 must divide"):
    curvature.gradient_noise_scale(loss_fn, jnp.zeros(3), {"x": jnp.zeros((8, 3)),
                                                           "y": jnp.zeros(8)}, group_size=3)
