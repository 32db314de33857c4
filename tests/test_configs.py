"""Every shipped experiment config validates, and the real-dataset configs train through
the real tfds ``data_source`` path on `tfds.testing.mock_data` (no download, no files)."""

import glob
import importlib
import os

import pytest
import tensorflow_datasets as tfds

from cnnjax import config as config_lib
from cnnjax.training import loop

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "configs")
def _is_study(path):
  # A study (or benchmark) config runs through experiments.compare (or
  # experiments.benchmark_optimizers, tested in tests/test_optimizer_benchmark.py) and
  # says so in its docstring.
  with open(path) as f:
    text = f.read()
  return "python -m experiments.compare" in text or "experiments.benchmark_optimizers" in text


EXPERIMENT_CONFIGS = sorted(
    os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
    if not os.path.basename(p).startswith("_") and not _is_study(p))


def load(name):
  return importlib.import_module(f"experiments.configs.{name}").get_config()


@pytest.mark.parametrize("name", EXPERIMENT_CONFIGS)
def test_config_is_valid_and_documents_its_command(name):
  config = load(name)
  config_lib.validate(config)
  doc = importlib.import_module(f"experiments.configs.{name}").__doc__ or ""
  if name != "base":
    assert "python -m experiments.main" in doc and "Expected" in doc, name


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar10_resnet20"])
def test_real_dataset_config_trains_on_mock_data(name, tmp_path):
  """The config's data path (dataset, augmentation, schedule, optimizer) end to end. The
  model is swapped for tiny_cnn: the configs' models train in tests/test_models.py, and
  compiling resnet20 here would cost half a minute."""
  config = load(name)
  config.model = "tiny_cnn"
  config.data_dir = str(tmp_path / "data")
  config.num_train_steps = 3
  config.batch_size = 16
  config.eval_batch_size = 16
  config.log_every_steps = 1
  config.progress = "none"
  config.parallel = "none"
  with tfds.testing.mock_data(num_examples=48):
    summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["status"] == "completed"
  assert summary["steps"] == 3
  assert summary["test_examples"] == 48
  assert 0.0 <= summary["test_accuracy"] <= 1.0
