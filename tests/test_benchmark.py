"""Smoke test of experiments.benchmark: a tiny run produces a complete record.

No timing is asserted (the machine is shared); only that every reported
figure exists and is positive, and that the PyTorch port has the same
parameter count as the cnnjax model (the benchmark checks that itself).
"""

import pytest

from experiments import benchmark


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
  torch = pytest.importorskip("torch")
  del torch
  # Hand counts: mnist_cnn 832 + 51,264 + 3,212,288 + 10,250 = 3,274,634.
  assert sum(p.numel() for p in benchmark._torch_model("mnist_cnn").parameters()) == 3_274_634
  assert sum(p.numel() for p in benchmark._torch_model("keras_cifar_cnn").parameters()) == 122_570
