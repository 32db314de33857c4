"""Where a compiled step's time goes: XLA thunk times from a `jax.profiler` trace, by layer.

`profile_compiled(compiled, args, steps=5)` runs ``compiled(*args)`` ``steps`` times
under `jax.profiler.trace`, reads the trace back with `jax.profiler.ProfileData`, and
attributes each XLA:CPU thunk (a fusion, a convolution, a copy, ...) to the JAX source
that produced it, through the ``op_name`` metadata XLA keeps on every instruction of
the compiled HLO (e.g. ``jit(train_step)/transpose(jvp(CifarResNet))/stage1_block1/conv1/
transpose``: the backward pass of layer ``stage1_block1/conv1``).

Reading the numbers: XLA:CPU runs independent thunks on several threads at once and a
convolution's arithmetic in Eigen's thread pool after its thunk has returned, so on
more than one core the thunk times overlap and miss most of the convolution work.
Pinned to one core (``taskset -c 0``) they add up to the step time.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name=\"([^\"]*)\"")
# Control-flow and call wrappers inside a layer's path (a chunked gradient's loop).
_WRAPPER = re.compile(r"while|body|cond|closed_call|checkpoint|remat|(p?jit|vmap)\(.*\)")
_SKIPPED = ("ThunkExecutor", "Threadpool", "SlinkyThreadPool", "end: ")


@dataclasses.dataclass(frozen=True)
class Row:
  """Milliseconds per step of one group of thunks."""
  key: str
  ms_per_step: float
  count_per_step: float


@dataclasses.dataclass(frozen=True)
class StepProfile:
  """Thunk time per step, by pass, layer, kind and thunk; ``step_ms`` is the wall time.

  A thunk's kind is its instruction kind (``fusion``, ``copy``, ...) or, for a
  custom call, its target (``cnnjax_conv_forward``, ...).
  """
  step_ms: float
  thunk_ms: float
  by_pass: list[Row]
  by_layer: list[Row]
  by_thunk: list[Row]
  by_kind: list[Row] = dataclasses.field(default_factory=list)


def op_sources(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its ``op_name`` metadata, from a compiled module's text.

  Example:
    >>> op_sources('  %fusion.3 = f32[2]{0} fusion(%p), metadata={op_name="jit(f)/mul"}')
    {'fusion.3': 'jit(f)/mul'}
  """
  return _by_instruction(hlo_text, _INSTRUCTION)


def _by_instruction(hlo_text: str, pattern: re.Pattern) -> dict[str, str]:
  """Instruction name -> the attribute ``pattern`` captures, on lines where it matches."""
  found = {}
  for line in hlo_text.splitlines():
    match = pattern.match(line)
    if match:
      found.setdefault(match.group(1), match.group(2))
  return found


_TARGET = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?custom_call_target=\"([^\"]*)\"")


def op_kinds(hlo_text: str) -> dict[str, str]:
  """Custom-call instruction name -> its target, from a compiled module's text.

  Example:
    >>> op_kinds('  %ffi_call.7 = f32[2]{0} custom-call(%p), custom_call_target="k"')
    {'ffi_call.7': 'k'}
  """
  return _by_instruction(hlo_text, _TARGET)


def thunk_kind(thunk: str, kinds: dict[str, str]) -> str:
  """The custom-call target of ``thunk``, else its name without the numeric suffix.

  Examples:
    >>> thunk_kind("loop_multiply_fusion.12", {})
    'loop_multiply_fusion'
    >>> thunk_kind("ffi_call.3", {"ffi_call.3": "cnnjax_bn_stats"})
    'cnnjax_bn_stats'
  """
  return kinds.get(thunk) or re.sub(r"(\.\d+)+$", "", thunk)


def split_source(op_name: str) -> tuple[str, str]:
  """(pass, layer) of an ``op_name``: pass 'forward', 'backward' or 'other'.

  The layer is the module path inside the model (the last component, the JAX
  primitive, dropped); '(outside the model)' for the loss, optimizer and metrics.

  Examples:
    >>> split_source("jit(train_step)/transpose(jvp(CifarResNet))/stage1_block1/conv1/transpose")
    ('backward', 'stage1_block1/conv1')
    >>> split_source("jit(train_step)/jvp(BNCNN)/bn1/sub")
    ('forward', 'bn1')
    >>> split_source("jit(f)/transpose(jvp(M))/conv1/while/body/closed_call/conv_general_dilated")
    ('backward', 'conv1')
    >>> split_source("jit(train_step)/mul")
    ('other', '(outside the model)')
  """
  parts = op_name.split("/")
  for i, part in enumerate(parts):
    found = re.fullmatch(r"(transpose\()?jvp\((\w+)\)\)?", part)
    if found:
      layer = "/".join(p for p in parts[i + 1:-1] if not _WRAPPER.fullmatch(p)) or "(model)"
      return ("backward" if found.group(1) else "forward"), layer
  return "other", "(outside the model)"


def _rows(totals: dict[str, int], counts: dict[str, int], steps: int) -> list[Row]:
  rows = [Row(k, v / steps / 1e6, counts[k] / steps) for k, v in totals.items()]
  return sorted(rows, key=lambda r: -r.ms_per_step)


def summarize(durations: Sequence[tuple[str, int]], sources: dict[str, str], *, steps: int,
              step_ms: float, kinds: dict[str, str] | None = None) -> StepProfile:
  """Groups (thunk name, nanoseconds) events of ``steps`` steps by pass, layer, kind, thunk."""
  names = ("pass", "layer", "thunk", "kind")
  by = {name: (collections.Counter(), collections.Counter()) for name in names}
  total = 0
  for thunk, ns in durations:
    pass_, layer = split_source(sources.get(thunk, ""))
    for name, key in (("pass", pass_), ("layer", f"{pass_}: {layer}"), ("thunk", thunk),
                      ("kind", thunk_kind(thunk, kinds or {}))):
      by[name][0][key] += ns
      by[name][1][key] += 1
    total += ns
  return StepProfile(step_ms=step_ms, thunk_ms=total / steps / 1e6,
                     by_pass=_rows(*by["pass"], steps), by_layer=_rows(*by["layer"], steps),
                     by_thunk=_rows(*by["thunk"], steps), by_kind=_rows(*by["kind"], steps))


def _thunk_events(trace_dir: str) -> list[tuple[str, int]]:
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
  if not files:
    raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
  data = jax.profiler.ProfileData.from_file(files[-1])
  events = []
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):  # XLA's threads; not Python's trace
        continue
      for event in line.events:
        if not event.name.startswith(_SKIPPED):
          events.append((event.name, int(event.duration_ns)))
  return events


def profile_compiled(compiled: Any, args: Sequence[Any], *, steps: int = 5,
                     carry: Callable[[Any, Sequence[Any]], Sequence[Any]] | None = None,
                     trace_dir: str | None = None) -> StepProfile:
  """Traces ``steps`` calls of ``compiled`` (a `jax.stages.Compiled`) and summarizes them.

  ``carry(output, args) -> next args`` threads a donated state from call to call
  (e.g. ``lambda out, a: (out[0], *a[1:])`` for a train step); without it the same
  ``args`` are passed each time. One call warms up, ``steps`` untraced calls give
  ``step_ms``, then ``steps`` traced calls give the thunk times. ``trace_dir`` keeps
  the trace (for TensorBoard or Perfetto); by default it is a temporary directory.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  carry = carry or (lambda out, a: a)
  args = list(args)

  def run() -> None:
    nonlocal args
    for _ in range(steps):
      out = compiled(*args)
      args = list(carry(out, args))
    jax.block_until_ready(out)

  out = compiled(*args)  # warm up: first-call allocations stay out of the numbers
  args = list(carry(out, args))
  jax.block_until_ready(out)
  start = time.perf_counter()
  run()  # untraced: the wall time per step without the profiler's own cost
  step_ms = (time.perf_counter() - start) / steps * 1e3
  keep = trace_dir is not None
  with contextlib.nullcontext(trace_dir) if keep else tempfile.TemporaryDirectory() as where:
    with jax.profiler.trace(where):
      run()
    events = _thunk_events(where)
  text = compiled.as_text()
  return summarize(events, op_sources(text), steps=steps, step_ms=step_ms,
                   kinds=op_kinds(text))
