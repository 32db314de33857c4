"""Smoke test of experiments.benchmark: a tiny run produces a complete record.

No timing is asserted (the machine is shared); only that every reported
figure exists and is positive, and that the PyTorch port has the same
parameter count as the cnnjax model (the benchmark checks that itself).
"""

import jax
import numpy as np
import pytest

from cnnjax import models
from experiments import benchmark, timed_step


def test_benchmark_model_smoke():
  compare_torch = True
  try:
    import torch  # noqa: F401
  except ImportError:
    compare_torch = False
  record = benchmark.benchmark_model(
      "keras_cifar_cnn", batch_size=8, windows=1, steps_per_window=1, requested_microbatches=2,
      compare_torch=compare_torch, donate=True, peak_gflops=100.0)
  # 122,570: the Keras tutorial's model.summary() for this architecture.
  assert record["params"] == 122_570
  for key in ("cnnjax_images_per_sec", "compile_seconds", "eval_images_per_sec",
              "pipeline_images_per_sec", "gflops_per_sec", "fraction_of_peak"):
    assert record[key] > 0, key
  # Forward+backward FLOPs per image: 3 x 2 x 4.5M MACs (conv 0.78M + 3.11M + 0.59M,
  # dense 0.07M, counted by hand from the layer shapes) ~ 27 MFLOP.
  assert 25 < record["train_mflops_per_image"] < 29
  if compare_torch:
    assert record["torch_images_per_sec"] > 0 and record["ratio"] > 0


def test_torch_ports_match_parameter_counts():
  torch_twins = pytest.importorskip("experiments.torch_twins")
  # Hand counts: mnist_cnn 832 + 51,264 + 3,212,288 + 10,250 = 3,274,634; keras 122,570 (the
  # TensorFlow tutorial's model.summary()); resnet20 269,722 (He et al.'s "0.27M").
  for name, shape, count in [("mnist_cnn", (28, 28, 1), 3_274_634),
                             ("keras_cifar_cnn", (32, 32, 3), 122_570),
                             ("resnet20", (32, 32, 3), 269_722)]:
    assert sum(p.numel() for p in torch_twins.twin(name, shape, count).parameters()) == count
  with pytest.raises(ValueError, match="parameters"):
    torch_twins.twin("bn_cnn", (8, 8, 1), 1)


# (name, input shape): every model, on small inputs where the model allows them.
TWIN_SHAPES = [("simple_cnn", (32, 32, 3)), ("keras_cifar_cnn", (32, 32, 3)),
               ("mnist_cnn", (28, 28, 1)), ("lenet5", (28, 28, 1)), ("bn_cnn", (8, 8, 1)),
               ("vgg_small", (8, 8, 3)), ("resnet20", (8, 8, 3)), ("resnet18", (8, 8, 1)),
               ("tiny_cnn", (8, 8, 1)), ("embedding_cnn", (8, 8, 1))]


def test_every_model_has_a_twin():
  torch_twins = pytest.importorskip("experiments.torch_twins")
  classifiers = set(models.MODELS) - set(timed_step.SCENE_MODELS)
  assert {n for n, _ in TWIN_SHAPES} == classifiers == set(torch_twins.TWINS)


@pytest.mark.parametrize("name,shape", TWIN_SHAPES, ids=[n for n, _ in TWIN_SHAPES])
def test_torch_twin_computes_what_the_cnnjax_model_computes(name, shape):
  """Same architecture, checked by running it: the twin, loaded with the cnnjax model's
  weights and (perturbed) BatchNorm statistics, gives the same logits in evaluation mode.
  PyTorch 2.13 is the independent implementation of every layer."""
  torch = pytest.importorskip("torch")
  from experiments import torch_twins
  model = models.get_model(name, num_classes=10, implementation="lax")
  x = np.random.default_rng(0).random((3, *shape), np.float32)
  # Random values in the variables' shapes (no compiled init needed): weights scaled by
  # fan-in, BatchNorm means near 0 and variances near 1, so activations stay O(1).
  rng = np.random.default_rng(2)

  def fill(path, a):
    name = path[-1].key
    if name in ("var", "scale"):
      return (1.0 + 0.1 * rng.random(a.shape)).astype(np.float32)
    fan_in = int(np.prod(a.shape[:-1])) if name == "kernel" else 10
    return (rng.standard_normal(a.shape) / np.sqrt(fan_in)).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(fill, jax.eval_shape(
      lambda: model.init(jax.random.key(1), x, train=False)))
  logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
  n_params = sum(a.size for a in jax.tree.leaves(variables["params"]))
  net = torch_twins.load_cnnjax_variables(torch_twins.twin(name, shape, n_params), model,
                                          variables, shape)
  with torch.no_grad():
    theirs = net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_allclose(logits, theirs, rtol=1e-4, atol=1e-5 * np.abs(logits).max())
