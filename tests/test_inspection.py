"""Tests of cnnjax.inspection and the experiments.inspect entrypoint."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import inspection, models
from cnnjax import worked_example as we

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name,shape,expected", [
    # TensorFlow CNN tutorial, model.summary(): 122,570.
    ("keras_cifar_cnn", (32, 32, 3), 122_570),
    # By hand: convs 9*1*32 + 9*32*32 + 9*32*64 + 9*64*64 (no bias), BatchNorm
    # 2*(32+32+64+64), dense 2*2*64*10 + 10.
    ("bn_cnn", (8, 8, 1), 9 * 32 + 9 * 32 * 32 + 9 * 32 * 64 + 9 * 64 * 64
     + 2 * (32 + 32 + 64 + 64) + 2 * 2 * 64 * 10 + 10),
    # By hand: 3*3*3*16 + 6*3*3*16*16 + 3*3*16*32 + 5*3*3*32*32 + 3*3*32*64
    # + 5*3*3*64*64 convs, 2*(16*7 + 32*6 + 64*6) BatchNorm, 64*10 + 10 dense.
    ("resnet20", (32, 32, 3), 432 + 6 * 2304 + 4608 + 5 * 9216 + 18432 + 5 * 36864
     + 2 * (16 * 7 + 32 * 6 + 64 * 6) + 650),
    # The usual count of the PyTorch CIFAR ResNet-18: 11,173,962.
    ("resnet18", (32, 32, 3), 11_173_962),
])
def test_totals_equal_pinned_counts(name, shape, expected):
  rows = inspection.layer_table(models.get_model(name, num_classes=10), shape)
  assert sum(r.params for r in rows) == expected
  # Only the leaves that hold parameters (conv, dense, BatchNorm) own any.
  assert {r.kind for r in rows if r.params} <= {"Conv", "Dense", "BatchNorm"}


def test_conv_and_dense_flops_follow_the_formula():
  rows = {r.path: r for r in inspection.layer_table(
      models.get_model("keras_cifar_cnn", num_classes=10), (32, 32, 3))}
  # conv2: 3x3 kernel, 32 -> 64 channels, valid, on the 15x15 pool1 output:
  # 13x13 outputs, each 3*3*32*64 multiply-adds, two FLOPs each.
  assert rows["conv2"].output_shape == (13, 13, 64)
  assert rows["conv2"].flops == 2 * 13 * 13 * 3 * 3 * 32 * 64 == 6_230_016
  assert rows["fc1"].flops == 2 * (4 * 4 * 64) * 64
  assert rows["pool1"].flops == 0 and rows["pool1"].output_shape == (15, 15, 32)
  # Call order, parents before children.
  assert [r.path for r in rows.values()][:3] == ["conv1", "relu1", "pool1"]


def test_strided_conv_flops_and_nesting():
  rows = {r.path: r for r in inspection.layer_table(
      models.get_model("resnet20", num_classes=10), (32, 32, 3))}
  block = rows["stage2_block1/conv1"]  # stride 2: 32x32x16 -> 16x16x32
  assert block.output_shape == (16, 16, 32) and block.depth == 2
  assert block.flops == 2 * 16 * 16 * 3 * 3 * 16 * 32
  paths = list(rows)
  assert paths.index("stage2_block1") < paths.index("stage2_block1/conv1")


def test_activation_stats_on_the_worked_example():
  x = jnp.asarray(we.IMAGE)[None, :, :, None]
  rows = {r.path: r for r in inspection.activation_stats(
      we.WorkedExampleNet(), {"params": we.example_params()}, x)}
  # relu1 by hand (docs/worked_example.md): columns 0-2 are zero, columns 3-4 are
  # [4 3], [6 6], [6 7], [6 6], [4 3].
  relu1 = np.zeros((5, 5))
  relu1[:, 3:] = [[4, 3], [6, 6], [6, 7], [6, 6], [4, 3]]
  r = rows["relu1"]
  assert r.output_shape == (5, 5, 1) and r.kind == "ReLU"
  assert r.fraction_zero == pytest.approx(15 / 25)
  assert r.mean == pytest.approx(relu1.mean()) and r.std == pytest.approx(relu1.std())
  assert rows["pool2"].mean == pytest.approx(6.0)


def test_activation_stats_in_train_mode():
  model = models.get_model("tiny_cnn", num_classes=10)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x)
  rows = {r.path: r for r in inspection.activation_stats(model, variables, x, train=True)}
  # In training mode BatchNorm output has batch mean 0 and std ~1 per channel.
  assert abs(rows["bn1_1"].mean) < 1e-5 and rows["bn1_1"].std == pytest.approx(1.0, abs=1e-3)


def test_parse_shape():
  assert inspection.parse_shape(["32", "32", "3"]) == (32, 32, 3)
  for bad in (["32", "32"], ["a", "b", "c"], ["0", "8", "1"]):
    with pytest.raises(ValueError, match="three positive integers"):
      inspection.parse_shape(bad)


def test_command_line():
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.inspect", "--config=experiments/configs/default.py",
       "--model=lenet5", "--input_shape=28,28,3", "--activations", "--batch_size=4"],
      cwd=REPO, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
      timeout=300)
  assert proc.returncode == 0, proc.stderr
  total = [line for line in proc.stdout.splitlines() if line.strip().startswith("total")]
  # LeNet-5 is 61,706 parameters on 28x28x1; three input channels add 5*5*2*6 weights.
  assert total and f"{61_706 + 5 * 5 * 2 * 6:,}" in total[0]
  # 28x28x3 is not the digits shape, so the batch is random, and the output says so.
  assert "4 uniform random images" in proc.stdout
  assert "tanh4" in proc.stdout
