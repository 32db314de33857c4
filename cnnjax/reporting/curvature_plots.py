"""PNGs of curvature: diagnostics over training, loss-landscape slices (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnnjax.reporting.plots import pyplot, save

# (quantity, its threshold key, axis label, threshold label)
_PANELS = (
    ("sharpness", "sharpness_threshold", "top Hessian eigenvalue", "stability threshold"),
    ("preconditioned_sharpness", "preconditioned_threshold",
     "top eigenvalue of P^-1/2 H P^-1/2", "(2 + 2 b1) / ((1 - b1) lr)"),
    ("hessian_trace", None, "Hessian trace (Hutchinson)", None),
    ("noise_scale", None, "gradient noise scale B_simple", None),
)


def _values(records: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
  def number(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan
  return np.asarray([number(r.get(key)) for r in records], np.float64)


def plot_diagnostics(records: Sequence[Mapping[str, Any]], path: str, title: str = "", *,
                     history: Sequence[Mapping[str, Any]] = ()) -> None:
  """One panel per logged quantity over training steps, thresholds as dashed lines; with
  ``history`` (the run's epoch records), the training loss on a right-hand axis of the
  first panel."""
  plt = pyplot()
  steps = np.asarray([r["step"] for r in records])
  panels = [p for p in _PANELS if np.any(np.isfinite(_values(records, p[0])))]
  if not panels:
    return
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
  if history:
    twin = axes[0][0].twinx()
    twin.plot([h["step"] for h in history], _values(history, "train_loss"), "-",
              color="tab:gray", lw=0.8, alpha=0.8)
    twin.set_yscale("log")
    twin.set_ylabel("training loss (grey, log scale)", color="tab:gray")
  for ax, (key, threshold, label, threshold_label) in zip(axes[0], panels):
    ax.plot(steps, _values(records, key), "-o", ms=2.5, label=key.replace("_", " "))
    limit = _values(records, threshold) if threshold else None
    if limit is not None and np.any(np.isfinite(limit)):
      ax.plot(steps, limit, "--", color="black", lw=1, label=threshold_label)
      top = np.nanmax(np.concatenate([_values(records, key), limit]))
      ax.set_ylim(0, 1.15 * top)
    if key == "noise_scale":
      ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  save(fig, path)


def plot_line(x: np.ndarray, curves: Mapping[str, np.ndarray], path: str, *, xlabel: str,
              title: str = "", reference: tuple[str, np.ndarray] | None = None) -> None:
  """Loss (left axis) and the headline metric (right axis) along a 1-D slice."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  (loss_key, loss), *rest = curves.items()
  ax.plot(x, loss, "-", color="tab:blue", label=loss_key)
  if reference is not None:
    ax.plot(x, reference[1], ":", color="tab:blue", label=reference[0])
    ax.set_ylim(0, 1.2 * np.nanmax(loss))
  ax.set_xlabel(xlabel)
  ax.set_ylabel(loss_key, color="tab:blue")
  ax.grid(alpha=0.3)
  lines, labels = ax.get_legend_handles_labels()
  if rest:
    twin = ax.twinx()
    for key, values in rest:
      twin.plot(x, values, "-", color="tab:red", label=key)
      twin.set_ylabel(key, color="tab:red")
    more = twin.get_legend_handles_labels()
    lines, labels = lines + more[0], labels + more[1]
  ax.legend(lines, labels, fontsize=8, loc="upper center")
  ax.set_title(_wrapped(title), fontsize=9)
  fig.tight_layout()
  save(fig, path)


def _wrapped(title: str, width: int = 64) -> str:
  """``title`` with each line wrapped to ``width`` characters (a long run name fits)."""
  import textwrap  # pylint: disable=g-import-not-at-top
  return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def plot_contour(alpha: np.ndarray, beta: np.ndarray, loss: np.ndarray, path: str, *,
                 title: str = "", levels: int = 30) -> None:
  """Filled contours of ``loss[i, j]`` at ``(alpha[i], beta[j])`` (log-spaced levels)."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5.6, 4.8))
  finite = loss[np.isfinite(loss)]
  low, high = max(finite.min(), 1e-6), finite.max()
  ticks = np.geomspace(low, high, levels) if high > low else levels
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  filled = ax.contourf(alpha, beta, np.clip(loss.T, low, high), levels=ticks, cmap="viridis",
                       norm=colors.LogNorm(low, high))
  ax.contour(alpha, beta, np.clip(loss.T, low, high), levels=ticks[::3], colors="white",
             linewidths=0.4)
  fig.colorbar(filled, ax=ax, label="loss (log scale)", format="%.3g")
  ax.plot([0], [0], "r*", ms=10, label="trained parameters")
  ax.set_xlabel("direction 1 (filter-normalised)")
  ax.set_ylabel("direction 2 (filter-normalised)")
  ax.legend(fontsize=8, loc="upper right")
  ax.set_title(_wrapped(title), fontsize=9)
  fig.tight_layout()
  save(fig, path)
