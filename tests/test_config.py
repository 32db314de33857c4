"""The config schema in the library: one default per key, `validate`, loss options from the
command line, and the one-direction dependency (no module under cnnjax/ imports experiments).
"""

import ast
import os
import pathlib

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from cnnjax import config as config_lib
from experiments.configs import base, default

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_base_config_is_the_library_schema():
  assert base.get_config().to_dict() == config_lib.get_config().to_dict()
  config_lib.validate(config_lib.get_config())
  config_lib.validate(default.get_config())


def test_every_loss_option_of_every_classification_loss_is_a_key():
  """A loss option a classifier can use must be settable from the command line."""
  from cnnjax import losses
  fixed = {"from_logits", "activation", "axis", "log_input"}  # set by the adapter
  for name in losses.classification_names():
    for option in losses.options_of(name):
      if option not in fixed:
        assert option in config_lib.LOSS_OPTIONS, (name, option)


def _parse(argv, monkeypatch):
  # config_flags registers the --config.* overrides it finds in sys.argv when the flag
  # is defined, as in `python -m experiments.main`.
  monkeypatch.setattr("sys.argv", ["prog", *argv])
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", str(REPO / "experiments/configs/default.py"),
                                  flag_values=values, lock_config=True)
  values(["prog", *argv])
  return values.config


def test_loss_options_settable_from_the_command_line(monkeypatch):
  config = _parse(["--config.loss.name=focal", "--config.loss.gamma=5",
                   "--config.loss.label_smoothing=0.05"], monkeypatch)
  config_lib.validate(config)
  assert config.loss.gamma == 5.0 and isinstance(config.loss.gamma, float)
  assert config_lib.loss_options(config.loss) == {"gamma": 5.0, "label_smoothing": 0.05}


def test_option_the_loss_does_not_take_is_refused_with_the_accepted_ones(monkeypatch):
  config = _parse(["--config.loss.name=focal", "--config.loss.margin=2"], monkeypatch)
  with pytest.raises(ValueError, match=r"loss\.margin is not an option of focal; accepted: "
                                       r"\[alpha, gamma, label_smoothing\]"):
    config_lib.validate(config)


def test_unknown_and_missing_keys_are_refused():
  config = config_lib.get_config()
  config.unlock()
  config.learning_rate = 0.1
  with pytest.raises(ValueError, match=r"unknown config key\(s\) \['learning_rate'\]"):
    config_lib.validate(config)
  partial = ml_collections.ConfigDict(config_lib.get_config().to_dict())
  del partial["optimizer"]["ema_decay"]
  with pytest.raises(ValueError, match=r"lacks key\(s\) \['optimizer.ema_decay'\]"):
    config_lib.validate(partial)


def test_validation_fraction_range_is_the_pipelines():
  """[0, 1) in the config check and in the data pipeline alike (0 = no validation split)."""
  import numpy as np
  from cnnjax.data import catalog, pipeline
  info = catalog.dataset_info("digits")
  arrays = (np.zeros((10, 8, 8, 1), np.uint8), np.arange(10) % 10)
  config = config_lib.get_config()
  for fraction in (0.0, 0.5, 0.9):
    config.validation_fraction = fraction
    config_lib.validate(config)
    data = pipeline.Dataset(info, arrays, arrays, batch_size=1, eval_batch_size=1,
                            validation_fraction=fraction)
    assert data.num_examples("validation") == round(fraction * 10)
  for fraction in (1.0, -0.1):
    config.validation_fraction = fraction
    with pytest.raises(ValueError, match=r"validation_fraction.*\[0, 1\)"):
      config_lib.validate(config)
    with pytest.raises(ValueError, match=r"validation_fraction.*\[0, 1\)"):
      pipeline.Dataset(info, arrays, arrays, batch_size=1, eval_batch_size=1,
                       validation_fraction=fraction)


def _imports(path: pathlib.Path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module


def test_no_library_module_imports_experiments():
  """Data flows one way: experiments/ uses cnnjax/, never the reverse (docstrings included)."""
  offenders = []
  for path in sorted((REPO / "cnnjax").rglob("*.py")):
    for name in _imports(path):
      if name == "experiments" or name.startswith("experiments."):
        offenders.append(f"{path.relative_to(REPO)}: {name}")
    if "from experiments" in path.read_text() or "import experiments" in path.read_text():
      offenders.append(f"{path.relative_to(REPO)}: mentions an experiments import")
  assert not offenders, offenders
  assert len(list((REPO / "cnnjax").rglob("*.py"))) > 30


def test_no_function_in_the_library_is_longer_than_80_lines():
  long = []
  for path in sorted((REPO / "cnnjax").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > 80:
          long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
  assert not long, long


def test_library_reads_no_flags():
  for path in sorted((REPO / "cnnjax").rglob("*.py")):
    text = path.read_text()
    if path.name == "prepare.py":  # a `python -m cnnjax.data.prepare` command of its own
      continue
    assert "flags.FLAGS" not in text and "DEFINE_" not in text, path
  assert os.path.exists(REPO / "cnnjax" / "config.py")
