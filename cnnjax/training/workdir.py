"""The run directory: can it be written, and does it already hold this run or another one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

# Keys that change how a run is displayed, not what it computes: a resumed
# run may change them freely.
PRESENTATION_KEYS = frozenset({"progress", "log_every_steps"})
# Keys that say where a run executes, not what it computes: a checkpoint
# restores in any parallel mode and device count (docs/parallel.md). bn_sync is
# not among them: it changes what BatchNorm normalizes over.
PLACEMENT_KEYS = frozenset({"parallel", "distributed"})


class RunError(RuntimeError):
  """A run that cannot start or continue; the message is one line for the user."""


def validate_workdir(workdir: str) -> None:
  """Raises RunError unless ``workdir`` is, or can become, a writable directory.

  Probes by creating (and removing) a temporary entry where the run will write: a
  permission bit says little under root or on special file systems (e.g. /proc).
  """
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise RunError(f"workdir={workdir!r} is a file; expected a directory (new or existing)")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise RunError(f"workdir={workdir!r} cannot be created: {parent} is not a directory")
  try:
    shutil.rmtree(tempfile.mkdtemp(prefix=".cnnjax-probe-", dir=parent))
  except OSError as e:
    what = "is not writable" if parent == path else f"cannot be created in {parent}"
    raise RunError(f"workdir={workdir!r} {what} ({e.strerror or type(e).__name__})") from None


def differing_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
  """``"key (old -> new)"`` for every computed key whose value differs.

  Example:
    >>> differing_keys({"seed": 0, "progress": "bar"}, {"seed": 1, "progress": "log"})
    ['seed (0 -> 1)']
  """
  keys = []
  for k in sorted(set(old) | set(new)):
    path = f"{prefix}{k}"
    if path in PRESENTATION_KEYS or path in PLACEMENT_KEYS:
      continue
    a, b = old.get(k, "<missing>"), new.get(k, "<missing>")
    if isinstance(a, dict) and isinstance(b, dict):
      keys += differing_keys(a, b, path + ".")
    elif a != b:
      keys.append(f"{path} ({a!r} -> {b!r})")
  return keys


def completed_summary(workdir: str, resolved: dict[str, Any], *,
                      allow_config_change: bool) -> dict[str, Any] | None:
  """The summary of a completed run of the same config in ``workdir``, else None.

  Raises:
    RunError: ``workdir`` holds a run of another config (unless allowed).
  """
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    return None
  with open(config_path) as f:
    diff = differing_keys(json.load(f), resolved)
  if diff and not allow_config_change:
    raise RunError(
        f"workdir {workdir} holds a run with a different config ({'; '.join(diff)}); "
        "use another --workdir, or --allow_config_change to continue it with the new config")
  summary_path = os.path.join(workdir, "summary.json")
  if diff or not os.path.exists(summary_path):
    return None
  with open(summary_path) as f:
    summary = json.load(f)
  return summary if summary.get("status") == "completed" else None
