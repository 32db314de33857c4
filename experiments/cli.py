"""What every cnnjax command-line entry point shares.

* **Process settings** (`configure_process`): the entry point, not the library, applies
  `cnnjax.cpu_runtime.configure` (XLA CPU flags, glibc malloc thresholds) before JAX's
  first computation, turns on JAX's persistent compilation cache (`compilation_cache`),
  and sets how much libraries log (warnings and above by default, everything with
  ``--verbose``).
* **Bad input is one line and exit code 2** (`run`): flag errors, a ``--config`` file
  that is missing, does not parse or whose ``get_config()`` raises, and any
  `ValueError` / `TypeError` the command raises for its input; ``--verbose`` shows
  the traceback.
* **Ctrl-C before training** ends the process with 130 and one line.
* **A quick exit**: the objects a command built are frozen out of the interpreter's final
  garbage collection (`gc.freeze`), which would otherwise take most of a second.
"""

from __future__ import annotations

import gc
import io
import logging as std_logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags, logging

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


class BadInput(Exception):
  """Raised by an entry point for input it refuses; printed as one line, exit 2."""


def verbose(argv: Sequence[str] | None = None) -> bool:
  """Whether ``--verbose`` is on (read from argv: it must work before flags are parsed)."""
  return any(a in ("--verbose", "--verbose=true", "--verbose=True")
             for a in (sys.argv if argv is None else argv))


def say(line: str) -> None:
  """Writes ``line`` and its newline to stderr in one system call.

  Several processes of one run share the terminal or pipe; one ``write`` of fewer
  than PIPE_BUF bytes is atomic, two (``print`` writes the text, then the end) can
  interleave with a peer's.
  """
  sys.stderr.flush()
  try:
    fd = sys.stderr.fileno()
  except (AttributeError, ValueError, io.UnsupportedOperation):  # a captured stream
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    return
  os.write(fd, (line + "\n").encode())


def fail(message: str, code: int = EXIT_BAD_INPUT, *, exc: BaseException | None = None):
  """Prints ``error: <first line of message>`` on stderr and exits with ``code``."""
  if exc is not None and verbose():
    traceback.print_exception(exc)
  line = " ".join(str(message).split("\n")[0].split()) or type(exc).__name__
  say(f"error: {line}")
  sys.exit(code)


def _config_file_error(e: BaseException, argv: Sequence[str]) -> str | None:
  """The one-line message for a ``--config`` file that cannot be loaded, else None."""
  given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  name = given[-1] if given else "the default config"
  if isinstance(e, (FileNotFoundError, IOError)) and "such file" in str(e):
    return f"--config={name}: no such file"
  if isinstance(e, SyntaxError):
    return f"--config={name}: {type(e).__name__} at line {e.lineno}: {e.msg}"
  text = str(e)
  if "get_config" in text or isinstance(e, (AttributeError, ImportError)) and "config" in text:
    return f"--config={name}: {type(e).__name__}: {' '.join(text.split())}"
  tb = traceback.extract_tb(e.__traceback__)
  if given and any(os.path.abspath(f.filename) == os.path.abspath(given[-1]) for f in tb):
    return (f"--config={name}: get_config() raised {type(e).__name__}: "
            f"{' '.join(text.split()) or '(no message)'}")
  return None


def _override_error(e: BaseException, argv: Sequence[str]) -> str:
  """An unknown key in a ``--config.a.b=v`` override, as one line naming it."""
  # ml_collections says e.g. AttributeError("'modle'\nDid you mean \"model\" ...?"),
  # with the quotes escaped one or more times.
  text = str(e)
  key = re.search(r"([A-Za-z_]\w*)\\*'", text)
  key = key.group(1) if key else "?"
  hint = re.search(r'Did you mean "([^"]+)"', text)
  given = [a for a in argv[1:] if a.startswith("--config.") and key in a]
  return (f"unknown config key {key!r} in {given[0] if given else 'a --config override'}"
          f"{f' (did you mean {hint.group(1)!r}?)' if hint else ''}; the accepted keys and "
          "their defaults are in cnnjax/config.py")


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's parser, with every error as one line and exit code 2 (no usage dump)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - each kind gets its own one-line message below
    message = _config_file_error(e, argv)
    if message is None and isinstance(e, (AttributeError, KeyError)):
      message = _override_error(e, argv)
    fail(message or " ".join(str(e).split()), exc=e)
  return []  # unreachable


def take_none_overrides(prefix: str = "--config.") -> list[str]:
  """Removes ``--config.key=None`` from ``sys.argv`` and returns those keys.

  config_flags cannot parse None into a typed field, yet None is how a config says
  "unset" (e.g. ``--config.loss.label_smoothing=None`` before switching to a loss that
  takes no smoothing). Call before the config flag is defined; give the keys to
  `config_value`.
  """
  keys = [a[len(prefix):-len("=None")] for a in sys.argv[1:]
          if a.startswith(prefix) and a.endswith("=None")]
  sys.argv[1:] = [a for a in sys.argv[1:] if not (a.startswith(prefix) and a.endswith("=None"))]
  return keys


def _unset(config, key: str) -> None:
  from cnnjax import config as schema  # pylint: disable=g-import-not-at-top
  try:
    node, leaf = schema.locate(config, key)
    node[leaf] = None
  except KeyError:
    fail(f"--config.{key}=None: {key!r} is not a config key that can be unset; the keys and "
         "their defaults are in cnnjax/config.py")


def config_value(holder, unset: Sequence[str] = ()):
  """The ConfigDict of a ``DEFINE_config_file`` flag, or one line and exit 2.

  ml_collections defers a missing file's error to the first use of the config.
  ``unset``: keys to set to None (from `take_none_overrides`).
  """
  value = holder.value
  if value is None:
    return None
  try:
    getattr(value, "keys")
  except OSError as e:
    fail(_config_file_error(e, sys.argv) or " ".join(str(e).split()), exc=e)
  for key in unset:
    _unset(value, key)
  return value


CACHE_ENV = "CNNJAX_COMPILATION_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/cnnjax/jax"


def compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache; returns its directory (None = off).

  A rerun of the same program (same model, shapes, flags, jax version) then loads its
  executables instead of compiling them (the default digits run: ~6 s of compilation).
  The directory is ``$CNNJAX_COMPILATION_CACHE``, else ``$JAX_COMPILATION_CACHE_DIR``,
  else ``~/.cache/cnnjax/jax``; ``CNNJAX_COMPILATION_CACHE=0`` turns it off.
  """
  import jax  # pylint: disable=g-import-not-at-top
  chosen = os.environ.get(CACHE_ENV) or os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if (chosen or "").strip().lower() in ("0", "off", "false", "none"):
    return None
  path = os.path.abspath(os.path.expanduser(chosen or DEFAULT_CACHE_DIR))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None  # a read-only home only costs compilation time
  jax.config.update("jax_compilation_cache_dir", path)
  # JAX's default only caches programs that took over a second to compile.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  return path


CPU_DEVICES_ENV = "JAX_NUM_CPU_DEVICES"


def cpu_devices_per_core() -> int:
  """Gives JAX one CPU device per core (at most 8) unless ``$JAX_NUM_CPU_DEVICES`` says how
  many; returns the number asked for. The study commands call it, before JAX's first
  computation, so that their "lanes" strategy trains one run per core
  (`cnnjax.study.lanes`); a single run still uses one device (``parallel`` picks it).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from cnnjax.study import lanes  # pylint: disable=g-import-not-at-top
  if os.environ.get(CPU_DEVICES_ENV):
    return int(jax.config.jax_num_cpu_devices)
  n = lanes.cpu_device_count()
  jax.config.update("jax_num_cpu_devices", n)
  return n


def configure_process(*, cache: bool = True, cpu_lanes: bool = False) -> dict:
  """The entry points' process settings; returns what `cpu_runtime.configure` applied.

  ``cache=False`` leaves JAX's persistent compilation cache off (the benchmark measures
  compilation itself); ``cpu_lanes=True`` asks for one CPU device per core
  (`cpu_devices_per_core`, the study commands).
  """
  from cnnjax import cpu_runtime  # pylint: disable=g-import-not-at-top
  applied = cpu_runtime.configure()
  if cpu_lanes:
    cpu_devices_per_core()
  if cache:
    compilation_cache()
  level = logging.INFO if verbose() else logging.WARNING
  logging.set_verbosity(level)
  # tfds and jax log through the standard library; their routine notes (a missing
  # dataset_info.json on first preparation, absent TPU backends) are for --verbose.
  for name in ("absl", "tensorflow_datasets", "jax._src.xla_bridge", "orbax"):
    std_logging.getLogger(name).setLevel(std_logging.INFO if verbose() else std_logging.ERROR)
  return applied


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run` with the shared error handling; exits 2 on `BadInput`."""
  def wrapped(argv):
    try:
      main(argv)
    except BadInput as e:
      fail(str(e), exc=e)
    finally:
      # The process ends now. Its last garbage collection would walk every object jax,
      # tfds and matplotlib built (0.7 s of a study's 0.8 s exit, measured). Frozen
      # objects in reference cycles get no finalizer at exit: the command's files and
      # checkpointers are closed explicitly (`with` blocks, close()), and anything added
      # later must be too; atexit handlers and thread joins still run.
      gc.freeze()

  try:
    app.run(wrapped, flags_parser=parse_flags)
  except KeyboardInterrupt:
    # Ctrl-C where the command has no stop handler of its own (imports, flag parsing).
    say("interrupted by SIGINT")
    sys.exit(130)
