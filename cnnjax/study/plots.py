"""A study's PNGs: learning curves, final headline metric, learning-rate sensitivity, losses.

Curves are means over seeds with a band from the lowest to the highest seed; the
y-range always contains the band. Epoch axes have whole-number ticks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnnjax.reporting.plots import integer_ticks, pyplot, save
from cnnjax.study.report import aggregate, headline_of

__all__ = ["plot_all"]

Results = Sequence[Mapping[str, Any]]


def _curves(runs: Results, key: str) -> tuple[np.ndarray, np.ndarray] | None:
  series = [[h.get(key, np.nan) for h in r["history"]] for r in runs if not r["diverged"]]
  if not series:
    return None
  n = min(len(s) for s in series)
  arr = np.asarray([s[:n] for s in series], np.float64)
  epochs = np.asarray([h["epoch"] for h in runs[0]["history"][:n]])
  return epochs, arr


def _by_setting(results: Results) -> dict[str, list[Mapping[str, Any]]]:
  by: dict[str, list[Mapping[str, Any]]] = {}
  for r in results:
    by.setdefault(r["setting"], []).append(r)
  return by


def _scale(results: Results) -> float:
  return 100.0 if results and results[0].get("headline_percent", True) else 1.0


def _band_limits(arrays: Sequence[np.ndarray], pad: float) -> tuple[float, float] | None:
  values = np.concatenate([a.ravel() for a in arrays]) if arrays else np.array([])
  values = values[np.isfinite(values)]
  if not values.size:
    return None
  lo, hi = float(values.min()), float(values.max())
  span = max(hi - lo, pad)
  return lo - 0.05 * span, hi + 0.05 * span


def _curve_panel(ax, by, settings, key, label_of, cmap, scale=1.0) -> list[np.ndarray]:
  drawn = []
  for i, s in enumerate(settings):
    c = _curves(by[s], key)
    if c is None:
      continue
    ep, arr = c
    arr = arr * scale
    color = cmap(i % cmap.N)
    ax.plot(ep, arr.mean(0), color=color, label=label_of(s), lw=1.6)
    if len(arr) > 1:
      ax.fill_between(ep, arr.min(0), arr.max(0), color=color, alpha=0.2)
    drawn.append(arr)
  integer_ticks(ax)
  ax.grid(alpha=0.3)
  return drawn


def _learning_curves(results: Results, directory: str, title: str, short) -> str:
  plt = pyplot()
  metric, _ = headline_of(results)
  by = _by_setting(results)
  optimizers = list(dict.fromkeys(r["optimizer"] for r in results))
  # One panel per optimizer when optimizers have several settings.
  panels = optimizers if len(by) > len(optimizers) > 1 else [None]
  fig, axes = plt.subplots(2, len(panels), figsize=(max(7, 4.2 * len(panels)), 7.5),
                           squeeze=False)
  cmap = plt.get_cmap("tab10")  # tab20 pairs similar shades; tab10 keeps neighbours distinct
  for j, opt in enumerate(panels):
    settings = [s for s in by if opt is None or by[s][0]["optimizer"] == opt]
    label = (lambda s: short(s)) if opt is None else (
        lambda s, o=opt: short(s).replace(f"{o} ", "", 1))
    top = _curve_panel(axes[0, j], by, settings, f"val_{metric}", label, cmap)
    _curve_panel(axes[1, j], by, settings, "train_loss", label, cmap)
    limits = _band_limits(top, pad=0.01)
    if limits:
      axes[0, j].set_ylim(*limits)
    if opt is not None:
      axes[0, j].set_title(opt, fontsize=10)
    axes[0, j].set_ylabel(f"validation {metric}")
    axes[1, j].set_ylabel("train loss (own loss)")
    axes[1, j].set_yscale("log")
    axes[1, j].set_xlabel("epoch")
    axes[0, j].legend(fontsize=7, loc="best")
  fig.suptitle(f"{title}: learning curves (mean over seeds, band = min..max)", fontsize=11)
  fig.tight_layout()
  save(fig, os.path.join(directory, "learning_curves.png"))
  return "learning_curves.png"


def _final_metric(results: Results, directory: str, title: str, short) -> str:
  plt = pyplot()
  rows, (metric, _), k = aggregate(results), headline_of(results), _scale(results)
  fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.6))
  for y, r in enumerate(reversed(rows)):
    if r["mean"] is None:
      ax.text(0.5, y, f"diverged ({r['diverged']}/{r['n']})", va="center", fontsize=8,
              transform=ax.get_yaxis_transform())
      continue
    ax.errorbar(k * r["mean"], y, xerr=k * r["std"], fmt="o", color="C0", capsize=4)
    ax.scatter([k * v for v in r["values"]], [y] * len(r["values"]), s=12, color="C1",
               alpha=0.7, zorder=3)
    if r["diverged"]:
      ax.annotate(f"{r['diverged']} diverged", (k * r["mean"], y), textcoords="offset points",
                  xytext=(8, 4), fontsize=7, color="C3")
  ax.set_yticks(range(len(rows)))
  ax.set_yticklabels([short(r["setting"]) for r in reversed(rows)], fontsize=8)
  ax.set_xlabel(f"test {metric}{' %' if k == 100 else ''} (mean ± std over seeds; "
                "orange = each seed)")
  ax.grid(axis="x", alpha=0.3)
  ax.set_title(f"{title}: final test {metric}", fontsize=11)
  fig.tight_layout()
  name = f"final_{metric}.png"
  save(fig, os.path.join(directory, name))
  return name


def _lr_sensitivity(results: Results, directory: str, title: str) -> str:
  plt = pyplot()
  rows, (metric, _), k = aggregate(results), headline_of(results), _scale(results)
  optimizers = list(dict.fromkeys(r["optimizer"] for r in results))
  losses = list(dict.fromkeys(r["loss"] for r in results))
  cmap = plt.get_cmap("tab10")
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, opt in enumerate(optimizers):
    for loss in losses:
      pts = sorted((r for r in rows if r["optimizer"] == opt and r["loss"] == loss),
                   key=lambda r: r["learning_rate"])
      good = [r for r in pts if r["mean"] is not None]
      ax.errorbar([r["learning_rate"] for r in good], [k * r["mean"] for r in good],
                  yerr=[k * r["std"] for r in good], marker="o", capsize=3, color=cmap(i),
                  label=opt if len(losses) == 1 else f"{opt} / {loss}")
      dv = [r["learning_rate"] for r in pts if r["diverged"]]
      if dv:
        ax.scatter(dv, [0] * len(dv), marker="x", color=cmap(i), s=60, zorder=3,
                   transform=ax.get_xaxis_transform(), clip_on=False)
  ax.set_xscale("log")
  ax.set_xlabel("learning rate (x at the bottom: some seeds diverged)")
  ax.set_ylabel(f"test {metric}{' %' if k == 100 else ''} (mean ± std)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  ax.set_title(f"{title}: learning-rate sensitivity", fontsize=11)
  fig.tight_layout()
  save(fig, os.path.join(directory, "lr_sensitivity.png"))
  return "lr_sensitivity.png"


def _loss_comparison(results: Results, directory: str, title: str) -> str:
  plt = pyplot()
  rows, (metric, _), k = aggregate(results), headline_of(results), _scale(results)
  by, cmap = _by_setting(results), plt.get_cmap("tab10")
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
  drawn = _curve_panel(a1, by, list(by), f"val_{metric}", lambda s: s.split(" / ", 1)[-1],
                       cmap, scale=k)
  limits = _band_limits(drawn, pad=k * 0.01)
  if limits:
    a1.set_ylim(*limits)
  a1.set_xlabel("epoch")
  a1.set_ylabel(f"validation {metric}{' %' if k == 100 else ''}")
  a1.legend(fontsize=7, loc="best")
  a1.set_title(f"validation {metric} (mean, band = min..max)", fontsize=10)
  order = [r for r in rows if r["mean"] is not None]
  a2.barh(range(len(order)), [k * r["mean"] for r in order],
          xerr=[k * r["std"] for r in order], capsize=3,
          color=[cmap(list(by).index(r["setting"]) % cmap.N) for r in order])
  a2.set_yticks(range(len(order)))
  a2.set_yticklabels([r["setting"].split(" / ", 1)[-1] for r in order], fontsize=7)
  a2.invert_yaxis()
  ends = [k * (r["mean"] + s * r["std"]) for r in order for s in (-1, 1)]
  if ends:
    span = max(max(ends) - min(ends), k * 0.01)
    a2.set_xlim(min(ends) - 0.3 * span, max(ends) + 0.1 * span)
  a2.set_xlabel(f"test {metric}{' %' if k == 100 else ''} (mean ± std)")
  a2.grid(axis="x", alpha=0.3)
  fig.suptitle(f"{title}: loss functions", fontsize=11)
  fig.tight_layout()
  save(fig, os.path.join(directory, "loss_comparison.png"))
  return "loss_comparison.png"


def _pooled_bins(runs: Results, key: str) -> dict[str, np.ndarray] | None:
  """Reliability bins pooled over a setting's seeds (counts added, means count-weighted)."""
  bins = [r["test_details"][key] for r in runs
          if not r["diverged"] and key in r.get("test_details", {})]
  if not bins:
    return None
  count = np.sum([b["count"] for b in bins], 0)
  pooled = {"count": count}
  for k in ("confidence", "accuracy"):
    weighted = np.nansum([np.asarray(b[k], np.float64) * np.asarray(b["count"]) for b in bins], 0)
    with np.errstate(invalid="ignore", divide="ignore"):
      pooled[k] = np.where(count > 0, weighted / count, np.nan)
  return pooled


def _reliability(results: Results, directory: str, title: str, short) -> list[str]:
  """One PNG per condition: a reliability diagram per setting, before and after TS."""
  plt = pyplot()
  names = []
  conditions = list(dict.fromkeys(r.get("condition", "") for r in results))
  for ci, condition in enumerate(conditions):
    by = _by_setting([r for r in results if r.get("condition", "") == condition])
    # A panel is named by its method where the methods tell the panels apart (calibration
    # studies), else by its setting, shortened (one optimizer per panel, all with one
    # loss) where that still tells them apart.
    names_of = {s: runs[0].get("method") or s for s, runs in by.items()}
    for name in (lambda s: short(s.removeprefix(f"{condition} / ")),
                 lambda s: s.removeprefix(f"{condition} / ")):
      if len(set(names_of.values())) == len(by):
        break
      names_of = {s: name(s) for s in by}
    fig, axes = plt.subplots(1, len(by), figsize=(3.2 * len(by), 3.6), squeeze=False)
    for ax, (setting, runs) in zip(axes[0], by.items()):
      for key, color, label in (("reliability", "C0", "T = 1"),
                                ("ts_reliability", "C1", "after TS")):
        b = _pooled_bins(runs, key)
        if b is None:
          continue
        shown = b["count"] > 0
        centers = (np.arange(len(b["count"])) + 0.5) / len(b["count"])
        ax.plot(centers[shown], b["accuracy"][shown], "o-", color=color, ms=3, label=label)
      ax.plot([0, 1], [0, 1], "k--", lw=0.8)
      ece = [r.get("test_ece") for r in runs if r.get("test_ece") is not None]
      ax.set_title(f"{names_of[setting]}\nECE {np.mean(ece):.4f}" if ece else
                   names_of[setting], fontsize=8)
      ax.set_xlim(0, 1)
      ax.set_ylim(0, 1)
      ax.set_xlabel("confidence", fontsize=8)
      if ax.get_legend_handles_labels()[0]:   # a setting whose every seed diverged has none
        ax.legend(fontsize=7, loc="upper left")
    axes[0, 0].set_ylabel("accuracy (pooled over seeds)")
    fig.suptitle(f"{title}{': ' + condition if condition else ''}: reliability (test)",
                 fontsize=10)
    fig.tight_layout()
    name = "reliability.png" if len(conditions) == 1 else f"reliability_{ci + 1}.png"
    save(fig, os.path.join(directory, name))
    names.append(name)
  return names


def plot_all(results: Results, directory: str, title: str) -> list[str]:
  """Writes the study's PNGs into ``directory``; returns their file names.

  learning_curves.png (validation headline metric and train loss per epoch),
  final_<metric>.png (mean ± std, dots = seeds), lr_sensitivity.png (when an optimizer
  has > 1 learning rate), loss_comparison.png (with > 1 loss), reliability[_k].png (one
  per condition, when the results carry reliability bins).
  """
  os.makedirs(directory, exist_ok=True)
  losses = list(dict.fromkeys(r["loss"] for r in results))
  optimizers = list(dict.fromkeys(r["optimizer"] for r in results))

  def short(setting: str) -> str:
    # With one loss the " / loss" part of every label says nothing.
    return setting.rsplit(" / ", 1)[0] if len(losses) == 1 else setting

  names = [_learning_curves(results, directory, title, short),
           _final_metric(results, directory, title, short)]
  # Only a sweep (some optimizer at several rates) has a sensitivity curve; optimizers
  # at their own different defaults do not.
  if any(len({r["learning_rate"] for r in results if r["optimizer"] == o}) > 1
         for o in optimizers):
    names.append(_lr_sensitivity(results, directory, title))
  if len(losses) > 1:
    names.append(_loss_comparison(results, directory, title))
  if any("reliability" in r.get("test_details", {}) for r in results):
    names += _reliability(results, directory, title, short)
  return names

