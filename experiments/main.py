"""Trains one experiment: ``python -m experiments.main [--config=FILE] [--workdir=DIR]``.

Overrides: ``--config.optimizer.learning_rate=0.1``. Rerunning with the same
``--workdir`` resumes the run from its last checkpoint.
"""

import datetime
import os
import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


def _fail(message: str, code: int) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _override_error(e: Exception) -> None:
  """An unknown key in a ``--config.a.b=v`` override, as one line naming it."""
  # ml_collections says e.g. AttributeError("'modle'\nDid you mean \"model\" ...?"),
  # with the quotes escaped one or more times.
  text = str(e)
  key = re.search(r"([A-Za-z_]\w*)\\*'", text)
  key = key.group(1) if key else "?"
  hint = re.search(r'Did you mean "([^"]+)"', text)
  given = [a for a in sys.argv[1:] if a.startswith("--config.") and key in a]
  if "--verbose" in sys.argv:
    traceback.print_exc()
  _fail(f"unknown config key {key!r} in {given[0] if given else 'a --config override'}"
        f"{f' (did you mean {hint.group(1)!r}?)' if hint else ''}; "
        "see experiments/configs/base.py for the accepted keys", EXIT_BAD_INPUT)


try:
  # Overrides in argv are resolved here, while the flag is defined.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", _DEFAULT_CONFIG, "Experiment config file (a Python file with get_config()).",
      lock_config=True)
except (AttributeError, KeyError) as e:
  _override_error(e)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for outputs and checkpoints; default runs/<config>-<timestamp>.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Continue a run in --workdir even if its config differs.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks for errors.")


def _default_workdir() -> str:
  filename = config_flags.get_config_filename(flags.FLAGS["config"]) or "default"
  name = os.path.splitext(os.path.basename(filename.split(":")[0]))[0]
  return os.path.join("runs", f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; flags look like --config.key=value", EXIT_BAD_INPUT)
  # Library chatter (orbax logs every checkpoint at INFO) would drown the progress lines.
  logging.set_verbosity(logging.INFO if _VERBOSE.value else logging.WARNING)
  config = _CONFIG.value
  workdir = _WORKDIR.value or _default_workdir()
  # Bad input fails here, before the data, checkpoint and plotting libraries
  # are imported and long before anything is compiled.
  from cnnjax.training import validation  # pylint: disable=g-import-not-at-top
  try:
    validation.validate_config(config)
    validation.validate_workdir(workdir)
  except (ValueError, TypeError) as e:
    if _VERBOSE.value:
      traceback.print_exc()
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__, EXIT_BAD_INPUT)
  # Imported here so that --help and flag errors stay instant.
  from cnnjax import parallel  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize_distributed(config.distributed)
  from cnnjax.data import DatasetNotFoundError  # pylint: disable=g-import-not-at-top
  from cnnjax.training import loop  # pylint: disable=g-import-not-at-top

  try:
    summary = loop.train_and_evaluate(config, workdir,
                                      allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except (ValueError, TypeError, loop.RunError, DatasetNotFoundError) as e:
    if _VERBOSE.value:
      traceback.print_exc()
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__, EXIT_BAD_INPUT)
  except loop.Interrupted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except loop.Diverged as e:
    if _VERBOSE.value:
      traceback.print_exc()
    _fail(str(e), EXIT_DIVERGED)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return  # one results table per run, not one per process
  if summary.get("reprinted"):
    print(f"{workdir} already holds a completed run; nothing to do. Its results:")
  print(loop.results_table(summary))
  print(f"outputs in {summary['workdir']}")


def _parse_flags(argv):
  """absl's parser, with flag errors as one line and exit code 2 (no usage dump)."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, TypeError, AttributeError, KeyError) as e:
    message = " ".join(str(e).split())
    if "--verbose" in argv:
      traceback.print_exc()
    _fail(message, EXIT_BAD_INPUT)


if __name__ == "__main__":
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt:
    # Ctrl-C before the training loop installs its own handler.
    print("interrupted by SIGINT before training started; nothing to save", file=sys.stderr,
          flush=True)
    sys.exit(130)
