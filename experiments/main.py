"""Trains one experiment: ``python -m experiments.main [--config=FILE] [--workdir=DIR]``.

Overrides: ``--config.optimizer.learning_rate=0.1``. Rerunning with the same
``--workdir`` resumes the run from its last checkpoint.
"""

import datetime
import os
import sys

from absl import flags
from ml_collections import config_flags

from experiments import cli

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")

_UNSET = cli.take_none_overrides()
try:
  # config_flags reads the --config.key=value overrides while it defines the flag.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", _DEFAULT_CONFIG, "Experiment config file (a Python file with get_config()).",
      lock_config=True)
except (AttributeError, KeyError) as e:
  cli.fail(cli._override_error(e, sys.argv), exc=e)  # pylint: disable=protected-access
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for outputs and checkpoints; default runs/<config>-<timestamp>.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Continue a run in --workdir even if its config differs.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and library logs.")


def _default_workdir() -> str:
  filename = config_flags.get_config_filename(flags.FLAGS["config"]) or "default"
  name = os.path.splitext(os.path.basename(filename.split(":")[0]))[0]
  return os.path.join("runs", f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def main(argv):
  # A signal from here on is a request to stop, honoured at the next safe point.
  from cnnjax.training.signals import Interrupted, StopRequest  # pylint: disable=g-import-not-at-top
  stop = StopRequest().install()
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; flags look like --config.key=value")
  cli.configure_process()
  config = cli.config_value(_CONFIG, _UNSET)
  workdir = _WORKDIR.value or _default_workdir()
  from cnnjax.training import loop  # pylint: disable=g-import-not-at-top
  from cnnjax import parallel  # pylint: disable=g-import-not-at-top
  try:
    stop.check_startup()
    parallel.maybe_initialize_distributed(config.distributed)
    summary = loop.train_and_evaluate(config, workdir, stop=stop,
                                      allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except Interrupted as e:
    cli.say(str(e))
    sys.exit(e.exit_code)
  except loop.Diverged as e:
    cli.fail(str(e), cli.EXIT_DIVERGED, exc=e)
  except (ValueError, TypeError, loop.RunError) as e:  # DatasetNotFoundError is a ValueError
    cli.fail(str(e), exc=e)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return  # one results table per run, not one per process
  if summary.get("reprinted"):
    print(f"{workdir} already holds a completed run; nothing to do. Its results:")
  print(loop.results_table(summary))
  print(f"outputs in {summary['workdir']}")


if __name__ == "__main__":
  cli.run(main)
