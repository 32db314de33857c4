r"""Loss landscape of a trained run: slices around its parameters, and between two runs.

  python -m experiments.landscape --workdir=RUN [--other=RUN2] [--batch_stats=train|eval]

Restores the run's last checkpoint (its config from ``RUN/config.json``, rebuilt with
`cnnjax.training.build.build_run`) and evaluates the loss and the task's headline metric
on ``--num_examples`` examples of ``--split``:

* a 1-D slice and a 2-D ``--points_2d`` x ``--points_2d`` grid along filter-normalised
  random directions (Li et al. 2018; biases and BatchNorm parameters are not moved unless
  ``--include_bias_bn``), coordinates in ``[-span, span]``;
* a slice along the top Hessian eigenvector (Lanczos on ``--hessian_examples``
  examples), with the quadratic model ``L0 + lambda t^2 / 2`` beside it; ``t`` runs to
  where that model has risen by ``--eigen_rise``;
* with ``--other``: the line ``(1 - alpha) theta_RUN + alpha theta_RUN2`` (the same model
  and dataset; e.g. the SGD and the Adam solution of one config).

BatchNorm (``--batch_stats``): ``train`` normalises every ``batch_size`` consecutive
examples with their own statistics at each point (the training loss); ``eval`` uses the
running averages of the checkpoint, which were collected at the trained parameters, not
at the displaced ones (on the line between two runs they are interpolated too). The JSON
records which. Outputs in ``--output_dir`` (default ``RUN/landscape``): landscape.json,
landscape_1d.png, landscape_2d.png, eigen_slice.png, interpolation.png. Every grid is one
compiled ``vmap`` over chunks of points.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The trained run's directory (config.json, checkpoints/).")
flags.DEFINE_string("other", None, "A second run of the same model and dataset: also "
                    "evaluate the line between the two.")
flags.DEFINE_string("output_dir", None, "Where to write; default WORKDIR/landscape.")
flags.DEFINE_enum("split", "train", ["train", "validation", "test"], "Examples to evaluate on.")
flags.DEFINE_integer("num_examples", 1024, "Examples of --split (0 = all), rounded down to a "
                     "multiple of the run's batch_size under --batch_stats=train.")
flags.DEFINE_enum("batch_stats", "train", ["train", "eval"],
                  "BatchNorm statistics: of each training-size batch, or the running averages.")
flags.DEFINE_bool("include_bias_bn", False, "Also move biases and BatchNorm scales/offsets.")
flags.DEFINE_float("span", 1.0, "Random-direction coordinates run over [-span, span].")
flags.DEFINE_integer("points_1d", 51, "Points of each 1-D slice.")
flags.DEFINE_integer("points_2d", 21, "Points per side of the 2-D grid (0 = skip it).")
flags.DEFINE_integer("interpolation_points", 31, "Points of the line between the two runs, "
                     "alpha in [-0.25, 1.25].")
flags.DEFINE_integer("hessian_examples", 256, "Examples of the Hessian for the eigenvector "
                     "slice (0 = skip the slice).")
flags.DEFINE_integer("lanczos_iterations", 20, "Lanczos steps for the top eigenvector.")
flags.DEFINE_float("eigen_rise", 1.0, "The eigenvector slice ends where the quadratic model "
                   "has risen by this much.")
flags.DEFINE_integer("seed", 0, "Seed of the random directions and the Lanczos start.")
flags.DEFINE_integer("chunk_examples", 8192, "Points x examples per compiled call (memory).")


def restore(workdir: str):
  """``(run, state, step)``: the run of ``workdir`` and its latest checkpoint."""
  from cnnjax import config as config_lib  # pylint: disable=g-import-not-at-top
  from cnnjax.training import build, checkpoint  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise cli.BadInput(f"--workdir={workdir}: no config.json; is it a cnnjax run directory?")
  with open(path) as f:
    config = config_lib.from_dict(json.load(f))
  config_lib.validate(config)
  run = build.build_run(config)
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
                          if isinstance(x, jax.Array) else x, run.state)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 keep=config.keep_checkpoints, goal=run.task.headline_goal)
  try:
    restored = ckpt.restore_latest(template)
  finally:
    ckpt.close()
  if restored is None:
    raise cli.BadInput(f"--workdir={workdir}: no readable checkpoint in {workdir}/checkpoints")
  step, state, _ = restored
  return run, state, step


def examples(run, split: str, num_examples: int, group: int) -> dict[str, jax.Array]:
  """The first ``num_examples`` examples of ``split`` (0 = all), a multiple of ``group``."""
  arrays = run.data.split_arrays(split)
  n = len(arrays["image"])
  size = (min(num_examples, n) if num_examples else n) // group * group
  if size == 0:
    raise cli.BadInput(f"--split={split} has {n} examples: not one batch of {group}")
  return {k: jnp.asarray(v[:size]) for k, v in arrays.items()}


class Scorer:
  """Loss and headline metric of a run at many points, one compiled vmap per chunk."""

  def __init__(self, run, batch, mode: str, chunk_examples: int):
    from cnnjax.training import curvature_loss  # pylint: disable=g-import-not-at-top
    self.run, self.batch, self.mode = run, batch, mode
    sums = curvature_loss.batch_sums(run, batch_stats_mode=mode)
    # One function object for every call, so that its compiled program is reused.
    self.fn = lambda point, data: sums(point["params"], point["batch_stats"], data)
    self.chunk = max(1, chunk_examples // int(batch["image"].shape[0]))

  def __call__(self, base, directions, coords) -> dict[str, list[float]]:
    from cnnjax import landscape  # pylint: disable=g-import-not-at-top
    sums = landscape.evaluate(self.fn, base, directions, coords, args=(self.batch,),
                              chunk=self.chunk)
    headline = self.run.task.headline
    finals = [self.run.task.finalize(jax.tree.map(lambda x, i=i: x[i], sums))
              for i in range(len(coords))]
    return {"loss": [f["loss"] for f in finals], headline: [f[headline] for f in finals]}


def _zeros_like(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def random_slices(scorer: Scorer, state, key, out: dict[str, Any]) -> None:
  """The 1-D slice and the 2-D grid along filter-normalised random directions."""
  from cnnjax import landscape  # pylint: disable=g-import-not-at-top
  base = {"params": state.params, "batch_stats": state.batch_stats}
  dirs = [{"params": landscape.filter_normalized_direction(
      jax.random.fold_in(key, k), state.params, include_bias_bn=FLAGS.include_bias_bn),
           "batch_stats": _zeros_like(state.batch_stats)} for k in range(2)]
  t0 = time.perf_counter()
  alpha = landscape.grid(FLAGS.span, FLAGS.points_1d, 1)
  out["one_d"] = {"alpha": alpha[:, 0].tolist(), **scorer(base, dirs[:1], alpha)}
  out["seconds"]["one_d"] = time.perf_counter() - t0
  if FLAGS.points_2d > 0:
    t0 = time.perf_counter()
    coords = landscape.grid(FLAGS.span, FLAGS.points_2d, 2)
    values = scorer(base, dirs, coords)
    axis = np.linspace(-FLAGS.span, FLAGS.span, FLAGS.points_2d).tolist()
    shape = (FLAGS.points_2d, FLAGS.points_2d)
    out["two_d"] = {"alpha": axis, "beta": axis,
                    **{k: np.asarray(v).reshape(shape).tolist() for k, v in values.items()}}
    out["seconds"]["two_d"] = time.perf_counter() - t0


def eigen_slice(scorer: Scorer, run, state, key, out: dict[str, Any]) -> None:
  """The slice along the top Hessian eigenvector, beside its quadratic model."""
  from cnnjax import curvature  # pylint: disable=g-import-not-at-top
  from cnnjax.training import curvature_loss  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  group = run.config.batch_size if scorer.mode == "train" else 1
  size = min(FLAGS.hessian_examples, scorer.batch["image"].shape[0]) // group * group
  batch = jax.tree.map(lambda x: x[:size], scorer.batch)
  loss_fn = curvature_loss.loss_function(run, state, batch, batch_stats_mode=scorer.mode)
  values, vectors = curvature.top_eigenpairs(loss_fn, state.params, k=1,
                                             num_iterations=FLAGS.lanczos_iterations, key=key)
  lam = float(values[0])
  vector = jax.tree.map(lambda v: v[0], vectors)
  reach = float(np.sqrt(2 * FLAGS.eigen_rise / lam)) if lam > 0 else FLAGS.span
  t = np.linspace(-reach, reach, FLAGS.points_1d)
  base = {"params": state.params, "batch_stats": state.batch_stats}
  values = scorer(base, [{"params": vector, "batch_stats": _zeros_like(state.batch_stats)}],
                  t[:, None])
  centre = values["loss"][len(t) // 2]
  out["eigen"] = {"eigenvalue": lam, "hessian_examples": int(size), "t": t.tolist(),
                  "quadratic": (centre + 0.5 * lam * t ** 2).tolist(), **values}
  out["seconds"]["eigen"] = time.perf_counter() - t0


def interpolation(scorer: Scorer, state, other_state, out: dict[str, Any]) -> None:
  """The line between the two runs' parameters (and running statistics)."""
  from cnnjax import landscape  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  a = {"params": state.params, "batch_stats": state.batch_stats}
  b = {"params": other_state.params, "batch_stats": other_state.batch_stats}
  alpha = np.linspace(-0.25, 1.25, FLAGS.interpolation_points)
  values = scorer(a, [landscape.line_between(a, b)], alpha[:, None])
  out["interpolation"] = {"alpha": alpha.tolist(), **values}
  out["seconds"]["interpolation"] = time.perf_counter() - t0


def _plots(out: dict[str, Any], directory: str, headline: str, title: str) -> list[str]:
  from cnnjax.reporting import curvature_plots as cp  # pylint: disable=g-import-not-at-top
  written = []
  pick = lambda d: {"loss": np.asarray(d["loss"]), headline: np.asarray(d[headline])}
  note = f"{title}\nBatchNorm: {out['batch_stats_note']}"
  cp.plot_line(np.asarray(out["one_d"]["alpha"]), pick(out["one_d"]),
               os.path.join(directory, "landscape_1d.png"),
               xlabel="filter-normalised random direction", title=note)
  written.append("landscape_1d.png")
  if "two_d" in out:
    d = out["two_d"]
    cp.plot_contour(np.asarray(d["alpha"]), np.asarray(d["beta"]), np.asarray(d["loss"]),
                    os.path.join(directory, "landscape_2d.png"), title=note)
    written.append("landscape_2d.png")
  if "eigen" in out:
    e = out["eigen"]
    cp.plot_line(np.asarray(e["t"]), pick(e), os.path.join(directory, "eigen_slice.png"),
                 xlabel=f"t along the top Hessian eigenvector (lambda = {e['eigenvalue']:.4g})",
                 title=note, reference=("L0 + lambda t^2 / 2", np.asarray(e["quadratic"])))
    written.append("eigen_slice.png")
  if "interpolation" in out:
    cp.plot_line(np.asarray(out["interpolation"]["alpha"]), pick(out["interpolation"]),
                 os.path.join(directory, "interpolation.png"),
                 xlabel=f"alpha: (1 - alpha) {out['workdir']} + alpha {out['other']}",
                 title=note)
    written.append("interpolation.png")
  return written


_NOTES = {"train": "statistics of each batch of {b} examples at every point (training loss)",
          "eval": "running averages from the checkpoint (not re-estimated at each point)"}


def _check_flags() -> None:
  if not FLAGS.workdir:
    raise cli.BadInput("--workdir is required: the directory of a trained run")
  for name in ("points_1d", "interpolation_points", "lanczos_iterations", "chunk_examples"):
    if FLAGS[name].value < 2:
      raise cli.BadInput(f"--{name}={FLAGS[name].value} must be >= 2")
  if FLAGS.points_2d == 1 or FLAGS.points_2d < 0:
    raise cli.BadInput(f"--points_2d={FLAGS.points_2d} must be 0 (skip) or >= 2")
  if not FLAGS.span > 0 or not FLAGS.eigen_rise > 0:
    raise cli.BadInput(f"--span={FLAGS.span} and --eigen_rise={FLAGS.eigen_rise} must be > 0")


def main(argv: list[str]) -> None:
  del argv
  _check_flags()
  cli.configure_process()
  t_start = time.perf_counter()
  run, state, step = restore(FLAGS.workdir)
  group = run.config.batch_size if FLAGS.batch_stats == "train" else 1
  scorer = Scorer(run, examples(run, FLAGS.split, FLAGS.num_examples, group), FLAGS.batch_stats,
                  FLAGS.chunk_examples)
  c = run.config
  out: dict[str, Any] = {
      "workdir": FLAGS.workdir, "other": FLAGS.other, "checkpoint_step": step,
      "split": FLAGS.split, "num_examples": int(scorer.batch["image"].shape[0]),
      "batch_stats_mode": FLAGS.batch_stats,
      "batch_stats_note": _NOTES[FLAGS.batch_stats].format(b=c.batch_size),
      "include_bias_bn": FLAGS.include_bias_bn, "span": FLAGS.span, "seed": FLAGS.seed,
      "headline": run.task.headline, "seconds": {"restore": time.perf_counter() - t_start}}
  key = jax.random.key(FLAGS.seed)
  random_slices(scorer, state, jax.random.fold_in(key, 0), out)
  if FLAGS.hessian_examples > 0:
    eigen_slice(scorer, run, state, jax.random.fold_in(key, 1), out)
  if FLAGS.other:
    other_run, other_state, _ = restore(FLAGS.other)
    if (other_run.config.model, other_run.config.dataset) != (c.model, c.dataset):
      raise cli.BadInput(f"--other={FLAGS.other} trains {other_run.config.model} on "
                         f"{other_run.config.dataset}; --workdir has {c.model} on {c.dataset}")
    interpolation(scorer, state, other_state, out)
  out["seconds"]["total"] = time.perf_counter() - t_start
  directory = FLAGS.output_dir or os.path.join(FLAGS.workdir, "landscape")
  os.makedirs(directory, exist_ok=True)
  written = _plots(out, directory, run.task.headline,
                   f"{c.model} / {c.loss.name} / {c.optimizer.name} on {c.dataset}, "
                   f"{out['num_examples']} {FLAGS.split} examples")
  with open(os.path.join(directory, "landscape.json"), "w") as f:
    json.dump(out, f, indent=1)
  print(f"landscape of {FLAGS.workdir} (step {step}) in {out['seconds']['total']:.1f} s: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in out["seconds"].items() if k != "total"))
  print(f"outputs in {directory}: landscape.json, {', '.join(written)}")


if __name__ == "__main__":
  cli.run(main)
