r"""Where one model's train step spends its time, by layer, pass and XLA thunk.

Usage (add ``taskset -c 0`` in front for times that add up to the step; see below):

  python -m experiments.profile_step --model=resnet20 --batch_size=128

It compiles the library's train step for ``--model`` exactly as the benchmark does
(`experiments.timed_step`: default config, Adam, cross-entropy, a synthetic batch on the
device), traces ``--steps`` steps with `jax.profiler` and prints the thunk time per
step by pass (forward, backward, other = loss, optimizer, metrics), the ``--top``
layers and the ``--top`` single thunks (`cnnjax.step_profile`). On more than one core
XLA:CPU overlaps thunks and runs a convolution's arithmetic in Eigen's pool after its
thunk returns, so the table undercounts convolutions; pinned to one core the thunk
times add up to the step time. ``--trace_dir`` keeps the trace for TensorBoard's
profile plugin or Perfetto.
"""

from __future__ import annotations

import jax
from absl import flags

from cnnjax import models, step_profile
from cnnjax.models import fast_ops
from experiments import cli, timed_step

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet20", "Model to profile (cnnjax.models).")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("steps", 5, "Traced steps (the table is per step).")
flags.DEFINE_integer("top", 15, "Rows of the layer and thunk tables.")
flags.DEFINE_enum("fast_ops", "auto", list(fast_ops.IMPLEMENTATIONS),
                  "Convolution/pooling formulation (see cnnjax.models.fast_ops).")
flags.DEFINE_string("trace_dir", "", "Keep the trace here (default: a temporary directory).")


def _table(title: str, rows, total: float, top: int) -> str:
  lines = [f"{title}:", f"  {'ms/step':>8}  {'share':>6}  {'n/step':>6}  name"]
  for row in rows[:top]:
    share = 100 * row.ms_per_step / total if total else 0.0
    lines.append(f"  {row.ms_per_step:8.2f}  {share:5.1f}%  {row.count_per_step:6.1f}  {row.key}")
  if len(rows) > top:
    rest = sum(r.ms_per_step for r in rows[top:])
    lines.append(f"  {rest:8.2f}  {100 * rest / total if total else 0:5.1f}%  {'':6}  "
                 f"({len(rows) - top} more)")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  cli.configure_process(cache=False)
  if FLAGS.model not in models.MODELS or FLAGS.model in timed_step.SCENE_MODELS:
    names = [m for m in models.model_names() if m not in timed_step.SCENE_MODELS]
    cli.fail(f"--model={FLAGS.model!r} is not an image classifier of cnnjax.models; "
             f"expected one of {names}")
  for flag in ("batch_size", "steps", "top"):
    if getattr(FLAGS, flag) < 1:
      cli.fail(f"--{flag}={getattr(FLAGS, flag)} must be >= 1")
  shape = timed_step.INPUT_SHAPES.get(FLAGS.model, (32, 32, 3))
  run = timed_step.build(FLAGS.model, shape, FLAGS.batch_size, FLAGS.fast_ops)
  batch = timed_step.synthetic_batch(shape, FLAGS.batch_size)
  key = jax.random.key(0)
  compiled = jax.jit(run.train_step(), donate_argnums=(0,)).lower(run.state, batch, key).compile()
  profile = step_profile.profile_compiled(
      compiled, (run.state, batch, key), steps=FLAGS.steps,
      carry=lambda out, args: (out[0], *args[1:]), trace_dir=FLAGS.trace_dir or None)
  print(f"{FLAGS.model}, batch {FLAGS.batch_size}, fast_ops {fast_ops.resolve(FLAGS.fast_ops)}, "
        f"{jax.device_count()} device(s): step {profile.step_ms:.1f} ms wall, thunk time "
        f"{profile.thunk_ms:.1f} ms (summed over threads; see the module docstring)")
  total = profile.thunk_ms
  print(_table("by pass", profile.by_pass, total, FLAGS.top))
  print(_table("by layer", profile.by_layer, total, FLAGS.top))
  print(_table("by kind", profile.by_kind, total, FLAGS.top))
  print(_table("by thunk", profile.by_thunk, total, FLAGS.top))


if __name__ == "__main__":
  cli.run(main)
