"""The source tutorials' hand-computed CNN example, built from cnnjax's own layers.

A 5x5x1 image goes through: a 3x3 vertical-edge conv ('same' zero padding, no
bias) -> ReLU -> 2x2/2 max pool -> a 3x3 horizontal-edge conv ('same', no bias)
-> ReLU -> 2x2/2 max pool -> flatten -> Dense(3) with the given weights and zero
bias -> softmax. Shapes: 5x5 -> 5x5 -> 5x5 -> 2x2 (a valid pool drops the last
row and column) -> 2x2 -> 2x2 -> 1x1 -> 1 value -> 3 logits -> 3 probabilities.
`python -m experiments.worked_example` prints every stage (docs/worked_example.md).
"""


from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.models import layers

IMAGE = np.array([[0, 1, 2, 1, 0],
                  [1, 2, 3, 2, 1],
                  [2, 3, 4, 3, 2],
                  [1, 2, 3, 2, 1],
                  [0, 1, 2, 1, 0]], dtype=np.float32)
VERTICAL_EDGE = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], dtype=np.float32)
HORIZONTAL_EDGE = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], dtype=np.float32)
DENSE_WEIGHTS = np.array([1.176856, -0.25833628, 1.3403485], dtype=np.float32)

# The printed and saved stages, in network order.
STAGES = ("input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "dense",
          "softmax", "predicted_class")

class WorkedExampleNet(nn.Module):
  """The example's network; submodule names are the stage names."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps x [N, H, W, 1] to logits [N, 3]; ``train`` changes nothing (no dropout/BN)."""
    x = layers.Conv(1, (3, 3), padding="SAME", use_bias=False, name="conv1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPool((2, 2), padding="VALID", name="pool1")(x)
    x = layers.Conv(1, (3, 3), padding="SAME", use_bias=False, name="conv2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.MaxPool((2, 2), padding="VALID", name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    return layers.Dense(3, name="dense")(x)


def example_params() -> dict:
  """The given weights in Flax's layout: conv kernels [3, 3, 1, 1], dense kernel [1, 3]."""
  return {
      "conv1": {"kernel": jnp.asarray(VERTICAL_EDGE)[:, :, None, None]},
      "conv2": {"kernel": jnp.asarray(HORIZONTAL_EDGE)[:, :, None, None]},
      "dense": {"kernel": jnp.asarray(DENSE_WEIGHTS)[None, :], "bias": jnp.zeros(3)},
  }


def run() -> dict[str, np.ndarray | int]:
  """Runs the example; returns every stage of `STAGES` for the single image.

  Spatial stages are [H, W] (the batch and the single channel dropped),
  ``flatten`` is [1], ``dense`` and ``softmax`` are [3].

  Example:
    >>> stages = run()
    >>> stages["pool2"].tolist(), stages["predicted_class"]
    ([[6.0]], 2)
  """
  x = jnp.asarray(IMAGE)[None, :, :, None]
  logits, state = WorkedExampleNet().apply(
      {"params": example_params()}, x, capture_intermediates=True, mutable=["intermediates"])
  captured = state["intermediates"]
  stages: dict[str, np.ndarray | int] = {"input": IMAGE}
  for name in ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2"):
    stages[name] = np.asarray(captured[name]["__call__"][0])[0, :, :, 0]
  stages["flatten"] = np.asarray(captured["flatten"]["__call__"][0])[0]
  stages["dense"] = np.asarray(logits)[0]
  stages["softmax"] = np.asarray(jax.nn.softmax(logits))[0]
  stages["predicted_class"] = int(np.argmax(stages["softmax"]))
  return stages


def format_stages(stages: dict) -> str:
  """Human-readable text of every stage, with its shape."""
  lines = []
  for name in STAGES:
    value = stages[name]
    if name == "predicted_class":
      lines.append(f"{name}: {value}")
      continue
    value = np.asarray(value)
    lines.append(f"{name} {list(value.shape)}:")
    text = np.array2string(value, precision=6, suppress_small=False, max_line_width=100)
    lines.extend("  " + line for line in text.splitlines())
  return "\n".join(lines)


def to_json(stages: dict) -> dict:
  """The stages as JSON-ready nested lists (``predicted_class`` stays an int)."""
  return {k: (v if k == "predicted_class" else np.asarray(v, dtype=np.float64).tolist())
          for k, v in stages.items()}
