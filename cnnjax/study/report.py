"""Study results: aggregation over seeds, the ranked markdown report, and Welch verdicts.

Everything is ranked by the task's headline metric on the test split (``headline`` in
each result: accuracy for classification), in its own direction (``headline_goal``:
higher or lower is better). Statistics: for each setting (a variant without its seed)
the mean and sample standard deviation (``ddof=1``) of the headline metric and of the
test loss over its non-diverged seeds. The summary compares the winner with the
runner-up by Welch's t statistic ``t = (m1 - m2) / sqrt(s1^2/n1 + s2^2/n2)`` with
Welch-Satterthwaite degrees of freedom (Welch 1947), and calls the margin larger than the
seed-to-seed spread when ``|t|`` exceeds the two-sided 5% critical value of Student's t
with those degrees of freedom. Plots are in `cnnjax.study.plots`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["aggregate", "headline_of", "welch", "write_report", "write_results"]


def headline_of(results: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
  """``(metric, goal)`` of a study's results (accuracy / max when they do not say)."""
  first = results[0] if results else {}
  return first.get("headline", "accuracy"), first.get("headline_goal", "max")


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
  v = [x for x in values if x is not None and math.isfinite(x)]
  if not v:
    return None, None
  return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _is_percent(key: str, runs: Sequence[Mapping[str, Any]]) -> bool:
  return "accuracy" in key and runs[0].get("headline_percent", True)


def _setting_row(setting: str, runs: Sequence[Mapping[str, Any]], metric: str,
                 key: str | None = None, columns: Sequence[str] = ()) -> dict[str, Any]:
  key = key or f"test_{metric}"
  ok = [r for r in runs if not r["diverged"]]
  mean, std = _mean_std([r.get(key) for r in ok])
  loss_m, loss_s = _mean_std([r.get("test_loss") for r in ok])
  reached = [r["steps_to_target"] for r in ok if r.get("steps_to_target") is not None]
  secs = [r["seconds_to_target"] for r in ok if r.get("seconds_to_target") is not None]
  return {
      "setting": setting, "metric": metric, "key": key, "n": len(runs),
      "diverged": len(runs) - len(ok), "condition": runs[0].get("condition", ""),
      "method": runs[0].get("method", ""),
      "mean": mean, "std": std, "values": [r.get(key) for r in ok if r.get(key) is not None],
      "columns": {c: _mean_std([r.get(c) for r in ok]) for c in columns},
      "column_values": {c: [r.get(c) for r in ok if r.get(c) is not None] for c in columns},
      "loss_mean": loss_m, "loss_std": loss_s, "reached_target": len(reached),
      "steps_to_target_mean": float(np.mean(reached)) if reached else None,
      "seconds_to_target_mean": float(np.mean(secs)) if secs else None,
      "optimizer": runs[0].get("optimizer"), "learning_rate": runs[0].get("learning_rate"),
      "loss": runs[0].get("loss"), "percent": _is_percent(key, runs),
  }


def aggregate(results: Sequence[Mapping[str, Any]], *, key: str | None = None,
              goal: str | None = None, columns: Sequence[str] = ()) -> list[dict[str, Any]]:
  """Per setting: n, diverged count, mean/std of the ranking metric, of the loss and of
  ``columns`` (result keys), steps to target.

  ``key`` is the result key to rank by (default ``test_<headline>``), ``goal`` its
  direction (default the headline's). Returns the settings grouped by condition (in
  order of appearance), each group ranked best first by the mean of ``key`` (ties by the
  smaller seed std; settings whose every seed diverged last).

  Example:
    >>> rows = aggregate([
    ...     {"setting": "a", "diverged": False, "test_accuracy": 0.9, "test_loss": 0.3},
    ...     {"setting": "a", "diverged": False, "test_accuracy": 0.8, "test_loss": 0.5},
    ...     {"setting": "b", "diverged": True, "test_accuracy": None, "test_loss": None}])
    >>> [(r["setting"], r["mean"] and round(r["mean"], 3), r["diverged"]) for r in rows]
    [('a', 0.85, 0), ('b', None, 1)]
  """
  metric, headline_goal = headline_of(results)
  goal = goal or headline_goal
  by: dict[str, list[Mapping[str, Any]]] = {}
  for r in results:
    by.setdefault(r["setting"], []).append(r)
  rows = [_setting_row(s, runs, metric, key, columns) for s, runs in by.items()]
  conditions = list(dict.fromkeys(r["condition"] for r in rows))
  sign = -1.0 if goal == "max" else 1.0
  # Ties (common: 360 test images) go to the smaller seed spread; losses of different
  # loss functions are not comparable, so the test loss is not a tie-breaker.
  rows.sort(key=lambda r: (conditions.index(r["condition"]), r["mean"] is None,
                           sign * (r["mean"] or 0.0),
                           r["std"] if r["std"] is not None else math.inf))
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
  # scipy.special's t distribution is the one scipy.stats.t evaluates (ppf(q) = stdtrit(df,
  # q), sf(x) = stdtr(df, -x)), without scipy.stats' ~1 s import in every report.
  from scipy import special  # pylint: disable=g-import-not-at-top
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  diff = float(a.mean() - b.mean()) if len(a) and len(b) else None
  if len(a) < 2 or len(b) < 2:
    return {"diff": diff, "t": None, "df": None, "critical": None, "p": None}
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  se2 = va + vb
  if se2 == 0:
    t = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    df = float(len(a) + len(b) - 2)
    return {"diff": diff, "t": t, "df": df, "critical": float(special.stdtrit(df, 0.975)),
            "p": 1.0 if diff == 0 else 0.0}
  t = diff / math.sqrt(se2)
  df = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return {"diff": diff, "t": float(t), "df": float(df),
          "critical": float(special.stdtrit(df, 0.975)),
          "p": float(2 * special.stdtr(df, -abs(t)))}


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


def fmt(x: float | None, as_percent: bool) -> str:
  """A headline value as the report shows it: percent with 2 decimals, else 4 decimals."""
  if x is None:
    return "n/a"
  return f"{100 * x:.2f}" if as_percent else f"{x:.4f}"


def _verdict(w: dict[str, Any]) -> str:
  return "exceeds" if abs(w["t"]) > w["critical"] else "does NOT exceed"


def _label(key: str) -> str:
  return key.replace("selected_test_", "test (selected) ").replace("test_", "test ").replace(
      "ts_", "after TS ").replace("_", " ")


def _summary(rows: Sequence[Mapping[str, Any]], n_test: int | None) -> list[str]:
  ok = [r for r in rows if r["mean"] is not None]
  if not ok:
    return ["Every variant diverged: no winner."]
  win, what = ok[0], _label(ok[0]["key"])
  pct = win["percent"]
  unit, points = ("%", " points") if pct else ("", "")
  lines = [f"**Winner: {win['setting']}**, {what} {fmt(win['mean'], pct)}{unit} "
           f"± {fmt(win['std'], pct)} over {win['n'] - win['diverged']} seeds."]
  if len(ok) > 1:
    run = ok[1]
    w = welch(win["values"], run["values"])
    pooled = math.sqrt((win["std"] ** 2 + run["std"] ** 2) / 2)
    margin = f"{fmt(abs(w['diff']), pct)}{points}"
    margin += " (a tie)" if w["diff"] == 0 else ""
    if n_test and pct:
      margin += f" (≈ {abs(w['diff']) * n_test:.1f} of {n_test} test images)"
    lines.append(f"Runner-up: {run['setting']} at {fmt(run['mean'], pct)}{unit}; margin "
                 f"{margin}; pooled seed std {fmt(pooled, pct)}{points}.")
    if w["t"] is None:
      lines.append("Too few seeds for a Welch t test (need >= 2 per setting).")
    else:
      lines.append(f"Welch t = {w['t']:.2f} (df {w['df']:.1f}, two-sided 5% critical value "
                   f"{w['critical']:.2f}, p = {w['p']:.3g}): the margin {_verdict(w)} the "
                   "seed-to-seed spread.")
    last = ok[-1]
    w = welch(win["values"], last["values"])
    tail = ""
    if w["t"] is not None:
      tail = (f"; winner minus worst {fmt(abs(w['diff']), pct)}{points}, Welch t = {w['t']:.2f} "
              f"(critical {w['critical']:.2f}): {_verdict(w)} the seed-to-seed spread")
    lines.append(f"Worst finishing setting: {last['setting']} at "
                 f"{fmt(last['mean'], pct)}{unit}{tail}.")
  div = [r for r in rows if r["diverged"]]
  if div:
    lines.append("Diverged runs (excluded from the means): "
                 + ", ".join(f"{r['setting']} ({r['diverged']}/{r['n']})" for r in div) + ".")
  return lines


def _welch_cell(values, baseline) -> str:
  if baseline is None or values is baseline["values"]:
    return "(baseline)"
  w = welch(values, baseline["values"])
  if w["t"] is None:
    return "n/a"
  star = "*" if abs(w["t"]) > w["critical"] else ""
  return f"{w['t']:+.2f}{star}"


def _cell(mean_std, percent: bool) -> str:
  mean, std = mean_std
  return "n/a" if mean is None else f"{fmt(mean, percent)} ± {fmt(std, percent)}"


def _table(rows: Sequence[Mapping[str, Any]], metric: str, goal: str,
           target: float | None, baseline: Mapping[str, Any] | None = None) -> list[str]:
  key = rows[0]["key"] if rows else f"test_{metric}"
  unit = " %" if rows and rows[0]["percent"] else ""
  columns = list(rows[0]["columns"]) if rows else []
  tgt = "n/a" if target is None else f"{target:g}"
  head = [f"{_label(key)}{unit} ({'higher' if goal == 'max' else 'lower'} is better)",
          f"Welch t vs {baseline['method'] or baseline['setting']}" if baseline else None,
          *[_label(c) + (" %" if "accuracy" in c else "") for c in columns], "test loss",
          f"reached val {metric} {tgt}", "steps to target (mean)", "diverged"]
  head = [h for h in head if h is not None]
  out = ["| rank | setting | " + " | ".join(head) + " |",
         "|---:|---|" + "---:|" * len(head)]
  for i, r in enumerate(rows, 1):
    loss = "n/a" if r["loss_mean"] is None else f"{r['loss_mean']:.4f} ± {r['loss_std']:.4f}"
    steps = "n/a" if r["steps_to_target_mean"] is None else f"{r['steps_to_target_mean']:.0f}"
    cells = [f"{fmt(r['mean'], r['percent'])} ± {fmt(r['std'], r['percent'])}"]
    if baseline:
      cells.append(_welch_cell(r["values"], baseline))
    cells += [_cell(r["columns"][c], "accuracy" in c) for c in columns]
    cells += [loss, f"{r['reached_target']}/{r['n'] - r['diverged']}", steps,
              f"{r['diverged']}/{r['n']}"]
    out.append(f"| {i} | {r['setting']} | " + " | ".join(cells) + " |")
  return out


def write_report(path: str, *, title: str, description: str,
                 results: Sequence[Mapping[str, Any]], target: float | None,
                 n_test: int | None, timing: Mapping[str, Any], plots: Sequence[str],
                 rank_by: str = "", rank_goal: str = "", columns: Sequence[str] = ()) -> str:
  """Writes report.md (per condition: ranked table with Welch t against the condition's
  first setting, generated summary; then plots and timing); returns its text."""
  rows = aggregate(results, key=rank_by or None, goal=rank_goal or None, columns=columns)
  metric, headline_goal = headline_of(results)
  goal = rank_goal or headline_goal
  out = [f"# {title}", "", description, "",
         f"Ranked by mean {_label(rows[0]['key']) if rows else metric} over seeds (± sample "
         "std, ddof=1) within each condition; diverged runs are excluded from the means and "
         "counted. 'Welch t vs' compares each setting with the condition's first setting "
         "(* = beyond the two-sided 5% critical value). Test loss is each run's own training "
         "loss on the test set (not comparable across different losses).", ""]
  summary: list[str] = []
  for condition in dict.fromkeys(r["condition"] for r in rows):
    part = [r for r in rows if r["condition"] == condition]
    first_setting = next(r["setting"] for r in results if r.get("condition", "") == condition)
    baseline = next(r for r in part if r["setting"] == first_setting) if len(part) > 1 else None
    if condition:
      out += [f"## {condition}", ""]
      summary += [f"**{condition}**: "]
    out += _table(part, metric, goal, target, baseline) + [""]
    summary += _summary(part, n_test) + [""]
  out += ["## Plots", ""]
  out += [f"![{os.path.splitext(os.path.basename(p))[0]}]({p})" for p in plots]
  out += ["", "## Timing", ""]
  out += [f"- {k}: {v:.2f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in timing.items()]
  out += ["", "## Summary (generated)", ""]
  out += summary
  text = "\n".join(out)
  with open(path, "w") as f:
    f.write(text)
  return text
