"""The worked example against an independent numpy re-derivation with plain loops.

By hand, two feature-map entries: conv1 at (0, 0) sees the zero-padded window
(rows -1..1, columns -1..1) [0 0 0], [0 0 1], [0 1 2]; the kernel adds the left
column and subtracts the right one: (0 + 0 + 0) - (0 + 1 + 2) = -3. At (2, 0) the
window (rows 1..3) is [0 1 2], [0 2 3], [0 1 2]: 0 - (2 + 3 + 2) = -7. pool2 is
6, so the logits are 6 * [1.176856, -0.25833628, 1.3403485] = [7.061136,
-1.550018, 8.042091] and class 2 wins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from cnnjax import worked_example as we

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def np_conv_same(image, kernel):
  """3x3 cross-correlation with one ring of zero padding, by explicit loops."""
  h, w = image.shape
  padded = np.zeros((h + 2, w + 2))
  padded[1:-1, 1:-1] = image
  out = np.zeros((h, w))
  for i in range(h):
    for j in range(w):
      total = 0.0
      for a in range(3):
        for b in range(3):
          total += padded[i + a, j + b] * kernel[a][b]
      out[i, j] = total
  return out


def np_max_pool_valid(x):
  """2x2 stride-2 max pool that drops a trailing odd row/column."""
  h, w = x.shape[0] // 2, x.shape[1] // 2
  out = np.zeros((h, w))
  for i in range(h):
    for j in range(w):
      out[i, j] = max(x[2 * i, 2 * j], x[2 * i, 2 * j + 1], x[2 * i + 1, 2 * j],
                      x[2 * i + 1, 2 * j + 1])
  return out


def reference():
  image = [[0, 1, 2, 1, 0], [1, 2, 3, 2, 1], [2, 3, 4, 3, 2], [1, 2, 3, 2, 1], [0, 1, 2, 1, 0]]
  vertical = [[1, 0, -1], [1, 0, -1], [1, 0, -1]]
  horizontal = [[1, 1, 1], [0, 0, 0], [-1, -1, -1]]
  weights = [1.176856, -0.25833628, 1.3403485]
  r = {"input": np.array(image, dtype=float)}
  r["conv1"] = np_conv_same(r["input"], vertical)
  r["relu1"] = np.maximum(r["conv1"], 0)
  r["pool1"] = np_max_pool_valid(r["relu1"])
  r["conv2"] = np_conv_same(r["pool1"], horizontal)
  r["relu2"] = np.maximum(r["conv2"], 0)
  r["pool2"] = np_max_pool_valid(r["relu2"])
  r["flatten"] = r["pool2"].reshape(-1)
  r["dense"] = np.array([sum(r["flatten"][i] * weights[k] for i in range(len(r["flatten"])))
                         for k in range(3)])
  exps = [np.exp(z - max(r["dense"])) for z in r["dense"]]
  r["softmax"] = np.array([e / sum(exps) for e in exps])
  r["predicted_class"] = int(np.argmax(r["softmax"]))
  return r


def test_stages_match_numpy_loops():
  stages, ref = we.run(), reference()
  assert list(stages) == list(we.STAGES)
  for name in we.STAGES:
    if name == "predicted_class":
      assert stages[name] == ref[name] == 2
    else:
      assert np.shape(stages[name]) == ref[name].shape, name
      np.testing.assert_allclose(stages[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
  # Hand-computed entries (module docstring).
  assert stages["conv1"][0, 0] == -3 and stages["conv1"][2, 0] == -7
  assert stages["pool2"].tolist() == [[6.0]]
  np.testing.assert_allclose(stages["dense"], [7.061136, -1.550018, 8.042091], rtol=1e-6)
  # Probabilities: non-negative and summing to one (the source's were not).
  assert np.all(stages["softmax"] >= 0) and abs(stages["softmax"].sum() - 1) < 1e-6


def test_command_line_json(tmp_path):
  out = tmp_path / "stages.json"
  proc = subprocess.run([sys.executable, "-m", "experiments.worked_example",
                         f"--output_json={out}"], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "predicted_class: 2" in proc.stdout
  data = json.loads(out.read_text())
  ref = reference()
  assert list(data) == list(we.STAGES)
  assert isinstance(data["predicted_class"], int) and data["predicted_class"] == 2
  for name in we.STAGES[:-1]:
    np.testing.assert_allclose(np.array(data[name]), ref[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)


def test_rejects_extra_arguments():
  proc = subprocess.run([sys.executable, "-m", "experiments.worked_example", "extra"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert proc.stderr.strip() == "error: unexpected arguments ['extra']"
