"""The environment pins in pyproject.toml stay compatible with what the installed jax asks."""

import importlib.metadata
import re

import ml_dtypes


def test_ml_dtypes_cap_is_compatible_with_jax():
  # pyproject.toml caps ml_dtypes below 0.7 (0.7.0 takes ~1 s to import). Once a jax
  # release needs ml_dtypes >= 0.7, the cap must go: this fails first.
  spec = next(r for r in importlib.metadata.requires("jax") if r.startswith("ml_dtypes"))
  floor = re.search(r">=\s*([0-9.]+)", spec)
  assert floor is not None, spec
  assert tuple(int(x) for x in floor.group(1).split(".")[:2]) < (0, 7), spec
  assert tuple(int(x) for x in ml_dtypes.__version__.split(".")[:2]) < (0, 7)
