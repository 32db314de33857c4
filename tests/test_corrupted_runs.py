"""End to end: a run on noisy labels writes what it changed and calibrated metrics; a
study with conditions and methods selects epochs on validation only."""

import json
import os

import ml_collections
import numpy as np

from cnnjax.study import expand, train_group
from cnnjax.study.grid import parse_point
from cnnjax.training import loop
from experiments.configs import default


def tiny(data_dir, **overrides):
  c = default.get_config()
  c.data_dir = data_dir
  c.model = "tiny_cnn"
  c.batch_size = 64
  c.num_train_steps = 40          # two epochs of the 1,294 digits train images
  c.progress = "none"
  c.parallel = "none"
  c.label_noise.kind = "symmetric"
  c.label_noise.rate = 0.2
  for k, v in overrides.items():
    c[k] = v
  return c


def test_noisy_run_records_flips_and_calibration(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  summary = loop.train_and_evaluate(tiny(data_dir), workdir)
  record = json.load(open(os.path.join(workdir, "data.json")))
  flipped = record["splits"]["train"]["flipped"] + record["splits"]["validation"]["flipped"]
  # 20% of each class's train + validation digits (1,437), rounded per class.
  assert abs(len(flipped) - 0.2 * 1437) <= 5 and record["noise_rate"] == len(flipped) / 1437
  assert summary["data"]["noise_rate"] == record["noise_rate"]
  assert sum(summary["data"]["test_class_counts"]) == summary["test_examples"] == 360
  for key in ("test_ece", "test_nll", "test_ts_ece", "test_temperature",
              "test_balanced_accuracy"):
    assert np.isfinite(summary[key]), key
  # The temperature was fitted on the (noisy) validation split of the final state.
  val_t = summary["history"][-1]["val_temperature"]
  assert summary["test_temperature"] == val_t
  assert os.path.exists(os.path.join(workdir, "plots", "reliability.png"))
  # The task's calibration lines appear once in the printed table, read from the summary.
  table = loop.results_table(json.load(open(os.path.join(workdir, "summary.json"))))
  assert table.count("test ECE / NLL") == 1 and f"{summary['test_ece']:.4f}" in table


def test_study_conditions_methods_and_selection_on_validation(data_dir):
  assert parse_point("lr: optimizer.learning_rate=0.1") == ("lr", {"optimizer.learning_rate": 0.1})
  s = ml_collections.ConfigDict(dict(
      base=tiny(data_dir), seeds=(0,), select_by="accuracy",
      conditions=("clean: label_noise.kind=none", "noisy: label_noise.rate=0.4"),
      methods=("CE: loss.name=sparse_categorical_cross_entropy",
               "LDAM-DRW: loss.name=ldam,reweighting.kind=class_balanced,"
               "reweighting.start_fraction=0.5")))
  variants = expand(s)
  assert [v.setting for v in variants] == [
      "clean / adamw / CE", "clean / adamw / LDAM-DRW", "noisy / adamw / CE",
      "noisy / adamw / LDAM-DRW"]
  assert variants[0].config.label_noise.kind == "none"
  assert variants[3].config.label_noise.rate == 0.4 and variants[3].config.loss.name == "ldam"
  assert variants[3].config.loss.label_smoothing is None  # the base's CE option is dropped
  (result,) = train_group([variants[3].config], select_by="accuracy")
  history = [h["val_accuracy"] for h in result["history"]]
  assert result["selected_epoch"] == 1 + int(np.argmax(history))
  assert 0.0 <= result["selected_test_accuracy"] <= 1.0
  assert result["test_details"]["reliability"]["count"]
