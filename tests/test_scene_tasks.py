"""The segmentation, localization and sequence tasks: metrics on hand-made predictions, and
short runs through the real data path (embedded digit scenes, tfds ``data_source``, the
training loop) covering outputs, TensorBoard, resume, parallel modes, studies and
inspection.

The runs use test-size models (``tiny_unet``, ``tiny_cnn``) and a few steps; what they
check is that every capability works for these tasks, not what the tasks reach (the
configs' measured results are in README.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import config as config_lib
from cnnjax import inspection, models, tasks
from cnnjax.data import catalog
from cnnjax.training import loop

SCENES = catalog.dataset_info("digit_scenes")
SINGLE = catalog.dataset_info("digit_scenes_single")


def finalize(task, outputs, batch):
  sums = task.eval_sums(jnp.asarray(outputs), {k: jnp.asarray(v) for k, v in batch.items()})
  return task.finalize({"loss_sum": 0.0, "count": float(np.sum(batch["mask"])), **sums})


# --- metrics on hand-made predictions ------------------------------------------------------

def test_segmentation_metrics_by_hand():
  task = tasks.get_task("segmentation", SCENES)
  labels = np.array([[[0, 0, 1, 1], [0, 2, 2, 255]],     # 255: not a class, counted nowhere
                     [[3, 3, 3, 3], [3, 3, 3, 3]]])      # masked-out example
  predicted = np.array([[[0, 1, 1, 1], [0, 2, 0, 7]],
                        [[0, 0, 0, 0], [0, 0, 0, 0]]])
  final = finalize(task, jax.nn.one_hot(predicted, 11), {"segmentation": labels,
                                                          "mask": np.array([1.0, 0.0])})
  # Example 0, 7 counted pixels: background TP 2 (FP 1 from a "2", FN 1 to "1") -> IoU 2/4;
  # class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2. No other class is present.
  assert final["iou_background"] == pytest.approx(0.5)
  assert final["iou_digit0"] == pytest.approx(2 / 3)
  assert final["iou_digit1"] == pytest.approx(0.5)
  assert np.isnan(final["iou_digit2"])
  assert final["mean_iou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
  # Dice 2TP / (2TP + FP + FN): 4/6, 4/5, 2/3.
  assert final["mean_dice"] == pytest.approx((4 / 6 + 4 / 5 + 2 / 3) / 3)
  assert final["pixel_accuracy"] == pytest.approx(5 / 7)
  assert final["confusion"].sum() == 7


def test_localization_metrics_by_hand():
  task = tasks.get_task("localization", SINGLE)
  h, w = SINGLE.image_shape[:2]
  boxes = np.array([[8, 12, 24, 36], [8, 12, 24, 36], [8, 12, 24, 36], [0, 0, 4, 4]], np.float32)
  predicted = np.array([[8, 12, 24, 36],       # exact: IoU 1
                        [8, 12, 24, 28],       # 2/3 of the width: IoU 16*16 / (16*24) = 2/3
                        [8, 36, 24, 48],       # disjoint: IoU 0
                        [0, 0, 4, 4]], np.float32)  # masked out
  outputs = np.zeros((4, 14), np.float32)
  # The task's form: centre and size as fractions of (H, W) through a sigmoid.
  centre, size = (predicted[:, :2] + predicted[:, 2:]) / 2, predicted[:, 2:] - predicted[:, :2]
  logit = lambda f: np.log(f / (1 - f))
  outputs[:, :2], outputs[:, 2:4] = logit(centre / [h, w]), logit(size / [h, w])
  outputs[np.arange(4), 4 + np.array([3, 5, 3, 0])] = 5.0
  final = finalize(task, outputs, {"box": boxes, "label": np.array([3, 3, 3, 1]),
                                   "mask": np.array([1.0, 1.0, 1.0, 0.0])})
  assert final["mean_iou"] == pytest.approx((1 + 2 / 3 + 0) / 3, rel=1e-5)
  assert final["iou_50"] == pytest.approx(2 / 3)
  assert final["iou_75"] == pytest.approx(1 / 3)
  assert final["class_accuracy"] == pytest.approx(2 / 3)
  assert final["count"] == 3


def test_sequence_metrics_by_hand():
  task = tasks.get_task("sequence", SCENES)
  end = task.end
  digits = np.array([[4, 2, 0], [4, 2, 0], [1, 7, 3], [5, 0, 0], [9, 9, 9]])
  present = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
  read = np.array([[4, 2, end],    # right
                   [4, 2, 6],      # right digits, no end: too long
                   [1, 8, 3],      # one digit wrong
                   [end, 5, end],  # ends at once: reads nothing
                   [0, 0, 0]])     # masked out
  outputs = jax.nn.one_hot(read, 11).reshape(5, 33) * 5
  final = finalize(task, outputs, {"digits": digits, "digit_mask": present,
                                   "mask": np.array([1.0, 1, 1, 1, 0])})
  assert final["sequence_accuracy"] == pytest.approx(1 / 4)
  # True digits 2 + 2 + 3 + 1 = 8; read right before the predicted end: 2 + 2 + 2 + 0.
  assert final["digit_accuracy"] == pytest.approx(6 / 8)
  assert final["length_accuracy"] == pytest.approx(2 / 4)  # the first and the third
  assert task.readings(np.asarray(outputs)) == [[4, 2], [4, 2, 6], [1, 8, 3], [], [0, 0, 0]]


# --- short runs through the real data path --------------------------------------------------

RUNS = {
    "segmentation": dict(task="segmentation", dataset="digit_scenes", model="tiny_unet",
                         loss="dice_cross_entropy"),
    "localization": dict(task="localization", dataset="digit_scenes_single", model="tiny_cnn",
                         loss="giou"),
    "sequence": dict(task="sequence", dataset="digit_scenes", model="tiny_cnn",
                     loss="sequence_cross_entropy"),
}
PLOTS = {"segmentation": "segmentation.png", "localization": "boxes.png",
         "sequence": "readings.png"}
STEPS = 8


def small_config(data_dir, kind, parallel="none", **overrides):
  spec = RUNS[kind]
  c = config_lib.get_config()
  c.task, c.dataset, c.model = spec["task"], spec["dataset"], spec["model"]
  c.loss.name = spec["loss"]
  c.data_dir = data_dir
  c.num_train_steps = STEPS
  c.batch_size = 16
  c.eval_batch_size = 400   # 800 validation and 2,000 test scenes in 2 and 5 batches
  c.log_every_steps = 2
  c.checkpoint_every_steps = 4
  c.progress = "none"
  c.parallel = parallel
  c.optimizer.name = "momentum"   # SGD: the parallel modes then agree to float32 noise
  c.optimizer.learning_rate = 0.01
  for k, v in overrides.items():
    c[k] = v
  return c


class _Runs(dict):
  """kind -> (workdir, summary), each kind trained on first use (the quick tier uses one)."""

  def __init__(self, tmp_path_factory, data_dir):
    super().__init__()
    self.tmp_path_factory, self.data_dir = tmp_path_factory, data_dir

  def __missing__(self, kind):
    workdir = str(self.tmp_path_factory.mktemp(kind))
    self[kind] = (workdir, loop.train_and_evaluate(small_config(self.data_dir, kind), workdir))
    return self[kind]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  return _Runs(tmp_path_factory, data_dir)


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_run_writes_outputs_plots_and_tensorboard(runs, kind, read_event_tags):
  workdir, summary = runs[kind]
  task = tasks.get_task(RUNS[kind]["task"], catalog.dataset_info(RUNS[kind]["dataset"]))
  headline = task.headline
  assert summary["status"] == "completed" and summary["steps"] == STEPS
  assert summary["headline"] == headline and summary["test_examples"] == 2000
  assert 0.0 <= summary[f"test_{headline}"] <= 1.0
  for name in ("summary.json", "plots/learning_curves.png", f"plots/{PLOTS[kind]}"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert {r["split"] for r in _records(workdir)} == {"train", "validation", "test"}
  tb = os.path.join(workdir, "tensorboard")
  tags = set().union(*(read_event_tags(os.path.join(tb, f)) for f in os.listdir(tb)))
  metric = task.train_metric_names[0]
  assert {"train/loss", f"train/{metric}", f"validation/{headline}", f"test/{headline}"} <= tags


@pytest.mark.parametrize("kind", ["segmentation"])
def test_resume_from_mid_run_checkpoint_is_identical(runs, kind, tmp_path, data_dir):
  """Back to the step-4 checkpoint (what a kill -9 after it leaves), rerun, same result.

  One task: what a task adds to a checkpoint (its headline in the metadata, its train
  metrics in the epoch sums) is the same kind of thing for each."""
  src, summary = runs[kind]
  workdir = str(tmp_path / "resumed")
  shutil.copytree(src, workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  for step in os.listdir(checkpoints):
    if step.isdigit() and int(step) > 4:
      shutil.rmtree(os.path.join(checkpoints, step))
  os.remove(os.path.join(workdir, "summary.json"))
  resumed = loop.train_and_evaluate(small_config(data_dir, kind), workdir)
  headline = summary["headline"]
  assert resumed["history"] == summary["history"]
  assert resumed[f"test_{headline}"] == summary[f"test_{headline}"]
  assert resumed["test_loss"] == summary["test_loss"]
  train = lambda w: [r["loss"] for r in _records(w) if r["split"] == "train"]
  assert train(workdir) == train(src)


# Per-pixel outputs and masks split over 8 devices in a sharded jit: what these tasks add
# to a parallel run (pmap, sharded and multi-process are each tested on classification,
# and every task's batch is a dict of arrays split along its first axis alike).
PARALLEL = [("segmentation", "sharded")]


@pytest.mark.parametrize("kind,mode", PARALLEL)
def test_parallel_modes_match_one_device(runs, kind, mode, tmp_path, data_dir):
  """8 fake devices, BatchNorm over the global batch: the same run as on one device."""
  _, reference = runs[kind]
  summary = loop.train_and_evaluate(small_config(data_dir, kind, parallel=mode),
                                    str(tmp_path / mode))
  assert summary["parallel"] == mode and len(summary["devices"]) == 8
  headline = reference["headline"]
  np.testing.assert_allclose(summary["test_loss"], reference["test_loss"], rtol=1e-4)
  np.testing.assert_allclose(summary[f"test_{headline}"], reference[f"test_{headline}"],
                             atol=2e-3)
  assert summary["test_examples"] == reference["test_examples"]


def test_study_ranks_by_the_task_headline(data_dir, tmp_path):
  import ml_collections
  from experiments import compare
  base = small_config(data_dir, "localization")
  base.num_train_steps, base.checkpoint_every_steps, base.validation_fraction = 4, 0, 0.0
  study = ml_collections.ConfigDict(dict(
      title="box losses (test)", base=base, optimizers=(), learning_rates=(),
      losses=("mean_squared_error", "giou:class_loss_weight=0.5"), seeds=(0, 1), target=0.5))
  out = compare.run_study(study, str(tmp_path), log=lambda _: None)
  results = out["results"]
  assert {r["headline"] for r in results} == {"mean_iou"}
  means = {s: np.mean([r["test_mean_iou"] for r in results if r["setting"] == s])
           for s in {r["setting"] for r in results}}
  ranked = [line.split("|")[2].strip() for line in out["report"].splitlines()
            if line.startswith("| 1 ") or line.startswith("| 2 ")]
  assert ranked == sorted(means, key=means.get, reverse=True)
  assert re.search(r"test mean iou( %)? \(higher is better\)", out["report"]), out["report"]


@pytest.mark.parametrize("name,kind", [("unet_small", "segmentation"), ("fcn", "segmentation"),
                                       ("loc_cnn", "localization"), ("seq_reader", "sequence")])
def test_inspection_of_scene_models(name, kind):
  info = catalog.dataset_info(RUNS[kind]["dataset"])
  size = tasks.get_task(kind, info).output_size
  model = models.get_model(name, num_classes=size)
  rows = inspection.layer_table(model, info.image_shape)
  x = jnp.zeros((1, *info.image_shape))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert sum(r.params for r in rows) == inspection.count_params(variables["params"])
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape[1:] == ((*info.image_shape[:2], size) if kind == "segmentation" else (size,))


def test_ready_made_scene_studies_expand_into_one_group_each():
  from cnnjax.study import expand, group_variants
  from experiments.configs import compare_box_losses, compare_segmentation_losses
  for module, task, losses in [(compare_segmentation_losses, "segmentation", 5),
                               (compare_box_losses, "localization", 7)]:
    variants = expand(module.get_config())
    assert len(variants) == 3 * losses
    assert {v.config.task for v in variants} == {task}
    assert len(group_variants(variants)) == 1  # every loss and seed in one program
