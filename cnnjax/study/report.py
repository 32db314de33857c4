"""Study results: aggregation over seeds, the ranked markdown report, and plots.

Statistics: for each setting (a variant without its seed) the mean and sample standard
deviation (``ddof=1``) of test accuracy and loss over its non-diverged seeds. The
summary compares the winner with the runner-up by Welch's t statistic
``t = (m1 - m2) / sqrt(s1^2/n1 + s2^2/n2)`` with Welch-Satterthwaite degrees of freedom
(Welch 1947), and calls the margin larger than the seed-to-seed spread when ``|t|``
exceeds the two-sided 5% critical value of Student's t with those degrees of freedom.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["aggregate", "plot_all", "welch", "write_report", "write_results"]


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
  v = [x for x in values if x is not None and math.isfinite(x)]
  if not v:
    return None, None
  return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def aggregate(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per setting: n, diverged count, mean/std of test accuracy and loss, steps to target.

  Returns the settings ranked by mean test accuracy (higher first; ties by lower mean
  seed std; settings whose every seed diverged last).

  Example:
    >>> rows = aggregate([
    ...     {"setting": "a", "diverged": False, "test_accuracy": 0.9, "test_loss": 0.3},
    ...     {"setting": "a", "diverged": False, "test_accuracy": 0.8, "test_loss": 0.5},
    ...     {"setting": "b", "diverged": True, "test_accuracy": None, "test_loss": None}])
    >>> [(r["setting"], r["accuracy_mean"] and round(r["accuracy_mean"], 3), r["diverged"])
    ...  for r in rows]
    [('a', 0.85, 0), ('b', None, 1)]
  """
  by: dict[str, list[Mapping[str, Any]]] = {}
  for r in results:
    by.setdefault(r["setting"], []).append(r)
  rows = []
  for setting, runs in by.items():
    ok = [r for r in runs if not r["diverged"]]
    acc_m, acc_s = _mean_std([r["test_accuracy"] for r in ok])
    loss_m, loss_s = _mean_std([r["test_loss"] for r in ok])
    reached = [r["steps_to_target"] for r in ok if r.get("steps_to_target") is not None]
    secs = [r["seconds_to_target"] for r in ok if r.get("seconds_to_target") is not None]
    rows.append({
        "setting": setting, "n": len(runs), "diverged": len(runs) - len(ok),
        "accuracy_mean": acc_m, "accuracy_std": acc_s, "loss_mean": loss_m, "loss_std": loss_s,
        "accuracies": [r["test_accuracy"] for r in ok],
        "reached_target": len(reached),
        "steps_to_target_mean": float(np.mean(reached)) if reached else None,
        "seconds_to_target_mean": float(np.mean(secs)) if secs else None,
        "optimizer": runs[0].get("optimizer"), "learning_rate": runs[0].get("learning_rate"),
        "loss": runs[0].get("loss"),
    })
  # Ties (common: 360 test images) go to the smaller seed spread; losses of different
  # loss functions are not comparable, so the test loss is not a tie-breaker.
  rows.sort(key=lambda r: (r["accuracy_mean"] is None, -(r["accuracy_mean"] or 0.0),
                           r["accuracy_std"] if r["accuracy_std"] is not None else math.inf))
  return rows


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float | None]:
  """Welch's t test of mean(a) - mean(b): ``{"diff", "t", "df", "critical", "p"}``.

  ``t`` is None when a side has fewer than 2 values; +-inf when both spreads are 0 and
  the means differ.

  Example (numbers checked by hand: diff 0.1, s^2/n = 0.01/3 + 0.01/3, t = 1.2247):
    >>> r = welch([0.9, 1.0, 1.1], [0.8, 0.9, 1.0])
    >>> round(r["diff"], 4), round(r["t"], 4), round(r["df"], 1)
    (0.1, 1.2247, 4.0)
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  diff = float(a.mean() - b.mean()) if len(a) and len(b) else None
  if len(a) < 2 or len(b) < 2:
    return {"diff": diff, "t": None, "df": None, "critical": None, "p": None}
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  se2 = va + vb
  if se2 == 0:
    t = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    df = float(len(a) + len(b) - 2)
    return {"diff": diff, "t": t, "df": df, "critical": float(stats.t.ppf(0.975, df)),
            "p": 1.0 if diff == 0 else 0.0}
  t = diff / math.sqrt(se2)
  df = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return {"diff": diff, "t": float(t), "df": float(df),
          "critical": float(stats.t.ppf(0.975, df)), "p": float(2 * stats.t.sf(abs(t), df))}


def write_results(path: str, study: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                  extra: Mapping[str, Any] | None = None) -> None:
  """Writes results.json: the study description, every variant, the ranked settings."""
  payload = {"study": dict(study), "settings": aggregate(results), "variants": list(results),
             **(extra or {})}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=1, default=_json_default, allow_nan=True)


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def _pct(x: float | None, digits: int = 2) -> str:
  return "n/a" if x is None else f"{100 * x:.{digits}f}"


def _summary(rows: Sequence[Mapping[str, Any]], n_test: int | None) -> list[str]:
  ok = [r for r in rows if r["accuracy_mean"] is not None]
  if not ok:
    return ["Every variant diverged: no winner."]
  win = ok[0]
  lines = [f"**Winner: {win['setting']}**, test accuracy {_pct(win['accuracy_mean'])}% "
           f"± {_pct(win['accuracy_std'])} over {win['n'] - win['diverged']} seeds."]
  if len(ok) > 1:
    run = ok[1]
    w = welch(win["accuracies"], run["accuracies"])
    pooled = math.sqrt((win["accuracy_std"] ** 2 + run["accuracy_std"] ** 2) / 2)
    margin = f"{_pct(w['diff'])} points" + (" (a tie)" if w["diff"] == 0 else "")
    if n_test:
      margin += f" (≈ {w['diff'] * n_test:.1f} of {n_test} test images)"
    lines.append(f"Runner-up: {run['setting']} at {_pct(run['accuracy_mean'])}%; margin {margin}; "
                 f"pooled seed std {_pct(pooled)} points.")
    if w["t"] is None:
      lines.append("Too few seeds for a Welch t test (need >= 2 per setting).")
    else:
      verdict = ("exceeds" if abs(w["t"]) > w["critical"] else "does NOT exceed")
      lines.append(f"Welch t = {w['t']:.2f} (df {w['df']:.1f}, two-sided 5% critical value "
                   f"{w['critical']:.2f}, p = {w['p']:.3g}): the margin {verdict} the "
                   "seed-to-seed spread.")
    last = ok[-1]
    w = welch(win["accuracies"], last["accuracies"])
    tail = ""
    if w["t"] is not None:
      verdict = "exceeds" if abs(w["t"]) > w["critical"] else "does NOT exceed"
      tail = (f"; winner minus worst {_pct(w['diff'])} points, Welch t = {w['t']:.2f} "
              f"(critical {w['critical']:.2f}): {verdict} the seed-to-seed spread")
    lines.append(f"Worst finishing setting: {last['setting']} at "
                 f"{_pct(last['accuracy_mean'])}%{tail}.")
  div = [r for r in rows if r["diverged"]]
  if div:
    lines.append("Diverged runs (excluded from the means): "
                 + ", ".join(f"{r['setting']} ({r['diverged']}/{r['n']})" for r in div) + ".")
  return lines


def write_report(path: str, *, title: str, description: str,
                 results: Sequence[Mapping[str, Any]], target_accuracy: float | None,
                 n_test: int | None, timing: Mapping[str, Any], plots: Sequence[str]) -> str:
  """Writes report.md (ranked table, plots, timing, generated summary); returns its text."""
  rows = aggregate(results)
  out = [f"# {title}", "", description, "",
         "Ranked by mean test accuracy over seeds (± sample std, ddof=1); diverged runs are "
         "excluded from the means and counted. Test loss is each run's own training loss "
         "on the test set (not comparable across different losses).", ""]
  tgt = "n/a" if target_accuracy is None else f"{target_accuracy:g}"
  out.append(f"| rank | setting | test accuracy % | test loss | reached val acc {tgt} | "
             "steps to target (mean) | diverged |")
  out.append("|---:|---|---:|---:|---:|---:|---:|")
  for i, r in enumerate(rows, 1):
    loss = ("n/a" if r["loss_mean"] is None else f"{r['loss_mean']:.4f} ± {r['loss_std']:.4f}")
    steps = "n/a" if r["steps_to_target_mean"] is None else f"{r['steps_to_target_mean']:.0f}"
    out.append(f"| {i} | {r['setting']} | {_pct(r['accuracy_mean'])} ± {_pct(r['accuracy_std'])}"
               f" | {loss} | {r['reached_target']}/{r['n'] - r['diverged']} | {steps} | "
               f"{r['diverged']}/{r['n']} |")
  out += ["", "## Plots", ""]
  out += [f"![{os.path.splitext(p)[0]}]({p})" for p in plots]
  out += ["", "## Timing", ""]
  out += [f"- {k}: {v:.2f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in timing.items()]
  out += ["", "## Summary (generated)", ""]
  out += _summary(rows, n_test)
  out.append("")
  text = "\n".join(out)
  with open(path, "w") as f:
    f.write(text)
  return text


# ---------------------------------------------------------------------------- plots

def _curves(runs: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
  series = [[h.get(key, np.nan) for h in r["history"]] for r in runs if not r["diverged"]]
  if not series:
    return None
  n = min(len(s) for s in series)
  arr = np.asarray([s[:n] for s in series], np.float64)
  epochs = np.asarray([h["epoch"] for h in runs[0]["history"][:n]])
  return epochs, arr


def plot_all(results: Sequence[Mapping[str, Any]], directory: str, title: str) -> list[str]:
  """Writes the study's PNGs into ``directory``; returns their file names.

  learning_curves.png (mean over seeds, band = min..max), final_accuracy.png (mean ±
  std, dots = seeds), lr_sensitivity.png (with > 1 learning rate), loss_comparison.png
  (with > 1 loss).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  os.makedirs(directory, exist_ok=True)
  rows = aggregate(results)
  by: dict[str, list[Mapping[str, Any]]] = {}
  for r in results:
    by.setdefault(r["setting"], []).append(r)
  names = []
  optimizers = list(dict.fromkeys(r["optimizer"] for r in results))
  losses = list(dict.fromkeys(r["loss"] for r in results))
  # tab20 pairs similar shades; tab10 cycled keeps neighbours distinct.
  cmap = plt.get_cmap("tab10")

  def short(setting: str) -> str:
    # With one loss the " / loss" part of every label says nothing.
    return setting.rsplit(" / ", 1)[0] if len(losses) == 1 else setting

  # Learning curves: one panel per optimizer when optimizers have several settings.
  many = len(by) > len(optimizers)
  panels = optimizers if many and len(optimizers) > 1 else [None]
  fig, axes = plt.subplots(2, len(panels), figsize=(max(7, 4.2 * len(panels)), 7.5),
                           squeeze=False)
  for j, opt in enumerate(panels):
    settings = [s for s in by if opt is None or by[s][0]["optimizer"] == opt]
    for i, s in enumerate(settings):
      color = cmap(i % cmap.N)
      label = short(s) if opt is None else short(s).replace(f"{opt} ", "", 1)
      for row, key in ((0, "val_accuracy"), (1, "train_loss")):
        c = _curves(by[s], key)
        if c is None:
          continue
        ep, arr = c
        ax = axes[row, j]
        ax.plot(ep, arr.mean(0), color=color, label=label, lw=1.6)
        if len(arr) > 1:
          ax.fill_between(ep, arr.min(0), arr.max(0), color=color, alpha=0.2)
    axes[0, j].set_title(opt or title, fontsize=10)
    axes[0, j].set_ylabel("validation accuracy")
    axes[1, j].set_ylabel("train loss (own loss)")
    axes[1, j].set_yscale("log")
    axes[1, j].set_xlabel("epoch")
    lo = [np.nanmin(_curves(by[s], "val_accuracy")[1].mean(0)) for s in settings
          if _curves(by[s], "val_accuracy") is not None]
    lo = [x for x in lo if math.isfinite(x)]
    if lo:
      axes[0, j].set_ylim(max(0.0, min(min(lo) - 0.02, 0.9)), 1.0)
    axes[0, j].grid(alpha=0.3)
    axes[1, j].grid(alpha=0.3)
    axes[0, j].legend(fontsize=7, loc="lower right")
  fig.suptitle(f"{title}: learning curves (mean over seeds, band = min..max)", fontsize=11)
  fig.tight_layout()
  fig.savefig(os.path.join(directory, "learning_curves.png"), dpi=110)
  plt.close(fig)
  names.append("learning_curves.png")

  # Final accuracy with error bars, ranked.
  fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.6))
  for y, r in enumerate(reversed(rows)):
    if r["accuracy_mean"] is None:
      ax.text(0.5, y, f"diverged ({r['diverged']}/{r['n']})", va="center", fontsize=8,
              transform=ax.get_yaxis_transform())
      continue
    ax.errorbar(100 * r["accuracy_mean"], y, xerr=100 * r["accuracy_std"], fmt="o",
                color="C0", capsize=4)
    ax.scatter([100 * a for a in r["accuracies"]], [y] * len(r["accuracies"]), s=12,
               color="C1", alpha=0.7, zorder=3)
    if r["diverged"]:
      ax.annotate(f"{r['diverged']} diverged", (100 * r["accuracy_mean"], y),
                  textcoords="offset points", xytext=(8, 4), fontsize=7, color="C3")
  ax.set_yticks(range(len(rows)))
  ax.set_yticklabels([short(r["setting"]) for r in reversed(rows)], fontsize=8)
  ax.set_xlabel("test accuracy % (mean ± std over seeds; orange = each seed)")
  ax.grid(axis="x", alpha=0.3)
  ax.set_title(f"{title}: final test accuracy", fontsize=11)
  fig.tight_layout()
  fig.savefig(os.path.join(directory, "final_accuracy.png"), dpi=110)
  plt.close(fig)
  names.append("final_accuracy.png")

  # Only a sweep (some optimizer at several rates) has a sensitivity curve; optimizers at
  # their own different defaults do not.
  if any(len({r['learning_rate'] for r in results if r['optimizer'] == o}) > 1
         for o in optimizers):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, opt in enumerate(optimizers):
      for loss in losses:
        pts = [r for r in rows if r["optimizer"] == opt and r["loss"] == loss]
        pts.sort(key=lambda r: r["learning_rate"])
        xs = [r["learning_rate"] for r in pts if r["accuracy_mean"] is not None]
        ys = [100 * r["accuracy_mean"] for r in pts if r["accuracy_mean"] is not None]
        es = [100 * r["accuracy_std"] for r in pts if r["accuracy_mean"] is not None]
        label = opt if len(losses) == 1 else f"{opt} / {loss}"
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label, color=cmap(i))
        dv = [r["learning_rate"] for r in pts if r["diverged"]]
        if dv:
          ax.scatter(dv, [0] * len(dv), marker="x", color=cmap(i), s=60, zorder=3,
                     transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (x at the bottom: some seeds diverged)")
    ax.set_ylabel("test accuracy % (mean ± std)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: learning-rate sensitivity", fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "lr_sensitivity.png"), dpi=110)
    plt.close(fig)
    names.append("lr_sensitivity.png")

  if len(losses) > 1:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for i, s in enumerate(by):
      c = _curves(by[s], "val_accuracy")
      if c is None:
        continue
      ep, arr = c
      a1.plot(ep, 100 * arr.mean(0), color=cmap(i % cmap.N), label=s.split(" / ", 1)[-1])
      if len(arr) > 1:
        a1.fill_between(ep, 100 * arr.min(0), 100 * arr.max(0), color=cmap(i % cmap.N), alpha=0.15)
    a1.set_xlabel("epoch")
    a1.set_ylabel("validation accuracy %")
    a1.set_ylim(80, 100)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7, loc="lower right")
    a1.set_title("validation accuracy (mean, band = min..max)", fontsize=10)
    order = [r for r in rows if r["accuracy_mean"] is not None]
    a2.barh(range(len(order)), [100 * r["accuracy_mean"] for r in order],
            xerr=[100 * r["accuracy_std"] for r in order], capsize=3,
            color=[cmap(list(by).index(r["setting"]) % cmap.N) for r in order])
    a2.set_yticks(range(len(order)))
    a2.set_yticklabels([r["setting"].split(" / ", 1)[-1] for r in order], fontsize=7)
    a2.invert_yaxis()
    lo = min(100 * (r["accuracy_mean"] - r["accuracy_std"]) for r in order) if order else 0
    a2.set_xlim(max(0, lo - 2), 100)
    a2.set_xlabel("test accuracy % (mean ± std)")
    a2.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title}: loss functions", fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "loss_comparison.png"), dpi=110)
    plt.close(fig)
    names.append("loss_comparison.png")
  return names
