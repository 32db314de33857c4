"""The optimizer benchmark's report: tables, performance profiles, best-of-k and
learning-rate sensitivity plots, the defaults panel (see `cnnjax.study.optimizer_benchmark`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from cnnjax.study import profiles, report, tuning

__all__ = ["write_benchmark"]

DEFAULTS_BEST = "defaults: best of all"


def _fmt_time(t: float, unit: str) -> str:
  if t is None or not math.isfinite(t):
    return "never"
  return f"{t:.0f}" if unit == "steps" else f"{t:.1f} s"


def _fmt_ms(ms: tuple[float | None, float | None], percent: bool) -> str:
  m, s = ms
  if m is None:
    return "-"
  scale = 100.0 if percent else 1.0
  return f"{m * scale:.2f} ± {s * scale:.2f}" if percent else f"{m:.4f} ± {s:.4f}"


def _lr_of(point: Mapping[str, Any]) -> str:
  lr = point.get("optimizer.learning_rate")
  rest = {k.split(".")[-1]: v for k, v in point.items() if k != "optimizer.learning_rate"}
  return (f"{lr:.3g}" if lr is not None else "default") + "".join(
      f", {k} {v:.3g}" for k, v in rest.items())


def _plot_profiles(curves: Mapping[str, np.ndarray], taus: np.ndarray,
                   scores: Mapping[str, float], path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for name, rho in sorted(curves.items(), key=lambda kv: -scores[kv[0]]):
    ax.step(taus, rho, where="post", label=f"{name} (score {scores[name]:.3f})",
            linestyle="--" if name == DEFAULTS_BEST else "-")
  ax.set_xlabel("tau: time to target / fastest time on the workload")
  ax.set_ylabel("fraction of workloads within tau")
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlim(taus[0], taus[-1])
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_workload(cells: Mapping[str, Mapping[str, Any]], workload: str, target: float,
                   path: str) -> None:
  """Two panels: expected best-of-k validation value, and validation value vs rate."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  for i, (opt, cell) in enumerate(cells.items()):
    color = f"C{i % 10}"
    values = [t["best_val"] for t in cell["trials"]]
    ks = np.arange(1, max(len(values), 1) + 1)
    curve = tuning.expected_best_of_k(values, ks, goal=cell["headline_goal"])
    left.plot(ks, curve["mean"], color=color, label=opt)
    left.fill_between(ks, curve["low"], curve["high"], color=color, alpha=0.15)
    lrs = [t["point"].get("optimizer.learning_rate") for t in cell["trials"]]
    ok = [(lr, v) for lr, v in zip(lrs, values) if lr is not None and v is not None]
    if ok:
      order = sorted(ok)
      right.plot([x for x, _ in order], [y for _, y in order], "o-", color=color, label=opt,
                 markersize=4)
  for ax in (left, right):
    ax.axhline(target, color="k", linestyle=":", linewidth=1, label="target")
    ax.set_ylabel(f"best validation {next(iter(cells.values()))['headline']}")
    ax.grid(alpha=0.3)
  left.set_xlabel("number of tuning trials k")
  left.set_title(f"{workload}: expected best of k trials (bootstrap, 90% band)", fontsize=9)
  right.set_xscale("log")
  right.set_xlabel("learning rate")
  right.set_title(f"{workload}: learning-rate sensitivity (every trial)", fontsize=9)
  right.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _workload_table(name: str, w: Mapping[str, Any], cells: Mapping[str, Mapping[str, Any]],
                    unit: str) -> list[str]:
  first = next(iter(cells.values()))
  percent = "accuracy" in first["headline"]
  metric = first["headline"] + (" %" if percent else "")
  lines = [f"### {name}: {w['description']}", "",
           f"Target: validation {first['headline']} "
           f"{'>=' if first['headline_goal'] == 'max' else '<='} {w['target']} "
           f"({w['reference_note']}).", "",
           f"| optimizer | {unit} to target (median over studies) | per study | seconds | "
           f"re-runs: best val {metric} | re-runs: test {metric} | trials reaching target "
           f"| best point per study | default rate: {unit} | default rate: val {metric} |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  order = sorted(cells, key=lambda o: (cells[o]["time"], o))
  for opt in order:
    c = cells[opt]
    lines.append(
        f"| {opt} | {_fmt_time(c['time'], unit)} | "
        f"{', '.join(_fmt_time(t, unit) for t in c['study_times'])} | "
        f"{_fmt_time(c['seconds'], 'seconds')} | {_fmt_ms(c['rerun_val'], percent)} | "
        f"{_fmt_ms(c['rerun_test'], percent)} | {c['reached_fraction']:.0%} | "
        f"{'; '.join(_lr_of(p) for p in c['best_points'])} | "
        f"{_fmt_time(c['default_time'], unit)} | {_fmt_ms(c['default_val'], percent)} |")
  return lines + [""]


def write_benchmark(directory: str, *, title: str, description: str,
                    workloads: Mapping[str, Mapping[str, Any]],
                    cells: Mapping[str, Mapping[str, Mapping[str, Any]]], unit: str,
                    max_ratio: float, timing: Mapping[str, Any],
                    settings: Mapping[str, Any]) -> str:
  """Writes report.md, results.json and plots/ into ``directory``; returns the report.

  ``cells[workload][optimizer]`` is `optimizer_benchmark.summarize`'s output.
  """
  os.makedirs(os.path.join(directory, "plots"), exist_ok=True)
  optimizers = list(next(iter(cells.values())))
  times = {o: {w: cells[w][o]["time"] for w in cells} for o in optimizers}
  scores = profiles.benchmark_score(times, max_ratio=max_ratio)
  taus = np.linspace(1.0, max_ratio, 601)
  curves = profiles.performance_profiles(times, taus=taus)
  _plot_profiles(curves, taus, scores, os.path.join(directory, "plots", "profiles.png"),
                 f"{title}: performance profiles (tuned, {unit} to target)")
  defaults = {o: {w: cells[w][o]["default_time"] for w in cells} for o in optimizers}
  with_defaults = {**times, DEFAULTS_BEST: {
      w: min(defaults[o][w] for o in optimizers) for w in cells}}
  d_scores = profiles.benchmark_score(with_defaults, max_ratio=max_ratio)
  _plot_profiles(profiles.performance_profiles(with_defaults, taus=taus), taus, d_scores,
                 os.path.join(directory, "plots", "defaults_vs_tuned.png"),
                 f"{title}: each optimizer tuned vs the best of all at default rates")
  plots = ["plots/profiles.png", "plots/defaults_vs_tuned.png"]
  for w in cells:
    _plot_workload(cells[w], w, workloads[w]["target"],
                   os.path.join(directory, "plots", f"workload_{w}.png"))
    plots.append(f"plots/workload_{w}.png")

  lines = [f"# {title}", "", description, "", "## Score (AlgoPerf)", "",
           f"Benchmark score: the performance profile integrated over tau in [1, {max_ratio:g}]"
           f", divided by {max_ratio - 1:g}: 1 = fastest on every workload, 0 = never within "
           f"{max_ratio:g}x of the fastest. Time = {unit} to the target.", "",
           "| rank | optimizer | score | " + " | ".join(f"{w} ({unit})" for w in cells) + " |",
           "|---|---|---|" + "---|" * len(cells)]
  for rank, o in enumerate(sorted(optimizers, key=lambda o: (-scores[o], o)), 1):
    lines.append(f"| {rank} | {o} | {scores[o]:.3f} | "
                 + " | ".join(_fmt_time(times[o][w], unit) for w in cells) + " |")
  lines += ["", "## Defaults of all optimizers vs each one tuned (Schmidt et al. 2021)", "",
            f"'{DEFAULTS_BEST}': per workload the fastest of the {len(optimizers)} optimizers "
            "at their own default learning rates (median over seeds, no tuning), scored "
            "beside the tuned optimizers.", "",
            "| submission | score | " + " | ".join(f"{w} ({unit})" for w in cells) + " |",
            "|---|---|" + "---|" * len(cells)]
  for o in sorted(with_defaults, key=lambda o: (-d_scores[o], o)):
    lines.append(f"| {o} | {d_scores[o]:.3f} | "
                 + " | ".join(_fmt_time(with_defaults[o][w], unit) for w in cells) + " |")
  lines += ["", "## Workloads", ""]
  for w in cells:
    lines += _workload_table(w, workloads[w], cells[w], unit)
  lines += ["## Timing", "", "| | |", "|---|---|"]
  lines += [f"| {k} | {v:.1f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in timing.items()]
  lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
  text = "\n".join(lines)
  with open(os.path.join(directory, "report.md"), "w") as f:
    f.write(text)
  payload = {"settings": dict(settings), "workloads": workloads, "cells": cells,
             "times": times, "scores": scores, "defaults_scores": d_scores,
             "timing": dict(timing)}
  with open(os.path.join(directory, "results.json"), "w") as f:
    json.dump(payload, f, indent=1, default=report._json_default,  # pylint: disable=protected-access
              allow_nan=True)
  return text

