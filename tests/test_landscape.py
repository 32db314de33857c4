"""Filter-normalised directions and grid evaluation (the command: test_diagnostics.py)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import landscape


def test_filter_normalisation_per_output_channel():
  rng = np.random.default_rng(0)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                     "bias": jnp.asarray(rng.normal(size=4), jnp.float32)},
            "bn": {"scale": jnp.ones(4)}}
  d = landscape.filter_normalized_direction(jax.random.key(1), params)
  norms = lambda k: np.sqrt((np.asarray(k) ** 2).sum(axis=(0, 1, 2)))
  np.testing.assert_allclose(norms(d["conv"]["kernel"]), norms(params["conv"]["kernel"]),
                             rtol=1e-5)
  assert not np.allclose(d["conv"]["kernel"], params["conv"]["kernel"])  # a random direction
  assert not np.any(d["conv"]["bias"]) and not np.any(d["bn"]["scale"])
  included = landscape.filter_normalized_direction(jax.random.key(1), params,
                                                   include_bias_bn=True)
  assert np.linalg.norm(included["bn"]["scale"]) == pytest.approx(2.0, rel=1e-5)  # ||ones(4)||
  np.testing.assert_array_equal(included["conv"]["kernel"], d["conv"]["kernel"])


def test_grid_evaluation_matches_the_formula():
  a = np.array([[2.0, 0.5], [0.5, 1.0]])
  f = lambda p, shift: 0.5 * p["w"] @ jnp.asarray(a, jnp.float32) @ p["w"] + shift
  base = {"w": jnp.array([1.0, -1.0])}
  d1, d2 = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.5, 1.0])}
  coords = landscape.grid(1.0, 5, 2)
  got = landscape.evaluate(f, base, [d1, d2], coords, args=(jnp.float32(3.0),), chunk=7)
  points = np.array([1.0, -1.0]) + coords @ np.array([[1.0, 0.0], [0.5, 1.0]])
  np.testing.assert_allclose(got, 0.5 * np.einsum("pi,ij,pj->p", points, a, points) + 3.0,
                             rtol=1e-5)
  with pytest.raises(ValueError, match=r"coords must be \[points, 2\]"):
    landscape.evaluate(f, base, [d1, d2], coords[:, :1], args=(0.0,))
