r"""Training / evaluation / input-pipeline throughput, optionally against PyTorch.

Usage (2-core CPU, ~2 minutes per model with --compare_torch):

  python -m experiments.benchmark --models=keras_cifar_cnn,mnist_cnn \
      --batch_size=128 --compare_torch --output_json=/tmp/bench.json

For each model it times the library's own compiled train step, assembled by
`cnnjax.training.build.build_run` exactly as a training run assembles it (the default
config's Adam and softmax cross-entropy, the CPU micro-batch rule), on a synthetic
batch already on the device, after compilation. With
``--compare_torch`` the same architecture in PyTorch eager (same parameter
count, same batch, Adam, cross-entropy) runs in the same process, in windows
alternating with the JAX ones, so that load from other processes hits both
alike; the ratio is of the medians. FLOPs are the forward FLOPs of the plain
lax formulation from XLA's cost analysis, times 3 for forward + backward;
``fraction_of_peak`` divides the achieved rate by the best of a numpy and an
XLA float32 matrix multiply measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from cnnjax import config as config_lib
from cnnjax import cpu_runtime, models, optimizers
from cnnjax.models import fast_ops
from cnnjax.training import manifest
from experiments import cli, timed_step

FLAGS = flags.FLAGS

flags.DEFINE_list("models", ["keras_cifar_cnn", "mnist_cnn"],
                  "Models to benchmark, or 'all' (every image classifier of cnnjax.models "
                  "but the test-only tiny_cnn).")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_bool("compare_torch", False, "Also time the same model in PyTorch eager.")
flags.DEFINE_string("output_json", "", "Write the results here as JSON.")
flags.DEFINE_integer("windows", 5, "Timed windows per contender (the median is reported).")
flags.DEFINE_integer("steps_per_window", 0, "Steps per window; 0 picks ~0.5 s per window.")
flags.DEFINE_integer("microbatches", 0, "Train-step micro-batches; 0 = the training rule "
                     "(cnnjax.training.steps.resolve_microbatches).")
flags.DEFINE_enum("fast_ops", "auto", list(fast_ops.IMPLEMENTATIONS),
                  "Convolution/pooling formulation (see cnnjax.models.fast_ops).")
flags.DEFINE_bool("donate", True, "Donate the train state to the step (buffer reuse).")
flags.DEFINE_string("optimizer", "adam", "optimizer.name of the timed step; 'sam' (with "
                    "--sam_base) takes a second gradient per step, which the rate shows.")
flags.DEFINE_string("sam_base", "adam", "optimizer.sam_base when --optimizer=sam.")

# ----------------------------------------------------------------------------- helpers


def _matmul_peak_gflops(n: int = 1024, repeats: int = 7) -> dict[str, float]:
  """Best float32 n x n matmul rate of numpy and of XLA, in GFLOP/s."""
  a = np.random.default_rng(0).random((n, n), np.float32)
  flops = 2.0 * n**3
  best_np = min(_timed(lambda: a @ a) for _ in range(repeats))
  ja = jnp.asarray(a)
  mm = jax.jit(lambda x: x @ x)
  mm(ja).block_until_ready()
  best_xla = min(_timed(lambda: mm(ja).block_until_ready()) for _ in range(repeats))
  return {"numpy_gflops_per_sec": flops / best_np / 1e9, "xla_gflops_per_sec": flops / best_xla / 1e9}


def _timed(fn: Callable[[], object]) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def _summary(rates: list[float]) -> dict[str, float]:
  return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def _forward_flops(model, variables, input_shape) -> float:
  """Forward FLOPs per image of the plain lax formulation (XLA cost analysis)."""
  lax_model = model.clone(implementation="lax")
  fwd = jax.jit(lambda v, x: lax_model.apply(v, x, train=False))
  cost = fwd.lower(variables, jnp.zeros((1, *input_shape))).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def _pipeline_rate(input_shape, batch_size: int, steps: int = 50) -> float:
  """Images/s of `cnnjax.data.pipeline.Dataset.train_batches` (to device) on synthetic uint8 data."""
  ds = timed_step.synthetic_dataset(input_shape, batch_size, steps)
  t = time.perf_counter()
  count = 0
  for batch in ds.train_batches(0):
    jax.block_until_ready(jax.device_put(batch))
    count += len(batch["label"])
  return count / (time.perf_counter() - t)


# ----------------------------------------------------------------------------- torch


def _torch_runner(name: str, input_shape, batch_size: int, jax_params: int):
  """A function running n PyTorch train steps of the twin of ``name`` (`torch_twins`)."""
  import torch  # pylint: disable=g-import-not-at-top
  from experiments import torch_twins  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = torch_twins.twin(name, input_shape, jax_params)
  h, w, c = input_shape
  x = torch.rand(batch_size, c, h, w)
  y = torch.randint(0, 10, (batch_size,))
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  loss_fn = torch.nn.CrossEntropyLoss()
  net.train()

  def run(n: int) -> None:
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(net(x), y)
      loss.backward()
      opt.step()
    loss.item()

  return run


# ----------------------------------------------------------------------------- one model


def benchmark_model(name: str, *, batch_size: int, windows: int, steps_per_window: int,
                    requested_microbatches: int, compare_torch: bool, donate: bool,
                    peak_gflops: float, implementation: str = "auto",
                    optimizer: str = "adam", sam_base: str = "adam") -> dict[str, object]:
  """Measures one model; returns the per-model JSON record."""
  input_shape = timed_step.INPUT_SHAPES.get(name, (32, 32, 3))
  run = timed_step.build(name, input_shape, batch_size, implementation, requested_microbatches,
             optimizer, sam_base)
  state, model, microbatches, n_params = run.state, run.model, run.microbatches, run.num_params
  step = jax.jit(run.train_step(), donate_argnums=(0,) if donate else ())
  batch = timed_step.synthetic_batch(input_shape, batch_size)
  key = jax.random.key(0)

  t = time.perf_counter()
  compiled = step.lower(state, batch, key).compile()
  compile_seconds = time.perf_counter() - t
  holder = [state]

  def run_jax(n: int) -> None:
    for _ in range(n):
      holder[0], metrics = compiled(holder[0], batch, key)
    jax.block_until_ready(metrics["loss"])

  run_jax(2)
  if steps_per_window <= 0:  # about half a second per window
    per_step = _timed(lambda: run_jax(3)) / 3
    steps_per_window = max(2, int(0.5 / per_step))

  torch_run = None
  if compare_torch:
    torch_run = _torch_runner(name, input_shape, batch_size, n_params)
    torch_run(2)
  jax_rates, torch_rates = [], []
  for _ in range(windows):  # alternate, so background load hits both contenders alike
    jax_rates.append(batch_size * steps_per_window / _timed(lambda: run_jax(steps_per_window)))
    if torch_run is not None:
      torch_rates.append(
          batch_size * steps_per_window / _timed(lambda: torch_run(steps_per_window)))

  eval_step = jax.jit(run.eval_step())
  eval_batch = dict(batch, mask=jnp.ones((batch_size,), jnp.float32))
  jax.block_until_ready(eval_step(holder[0], eval_batch))
  eval_rates = []
  for _ in range(windows):
    eval_rates.append(batch_size * steps_per_window / _timed(lambda: [
        jax.block_until_ready(eval_step(holder[0], eval_batch)) for _ in range(steps_per_window)]))

  variables = {"params": holder[0].params}
  if holder[0].batch_stats:
    variables["batch_stats"] = holder[0].batch_stats
  train_flops = 3.0 * _forward_flops(model, variables, input_shape)
  # SAM's ascent step costs a second forward-backward pass per step.
  gradients = 2 if optimizers.needs_grad_fn(state.opt_state) else 1
  step_flops = gradients * train_flops  # the cnnjax step's; the PyTorch twin takes one
  jax_median = statistics.median(jax_rates)
  record: dict[str, object] = {
      "params": n_params,
      "input_shape": list(input_shape),
      "optimizer": optimizer if optimizer != "sam" else f"sam({sam_base})",
      "gradients_per_step": gradients,
      "microbatches": microbatches,
      "fast_ops": fast_ops.resolve(implementation),
      "steps_per_window": steps_per_window,
      "cnnjax_images_per_sec": jax_median,
      "cnnjax_spread": _summary(jax_rates),
      "compile_seconds": compile_seconds,
      "eval_images_per_sec": statistics.median(eval_rates),
      "eval_spread": _summary(eval_rates),
      "pipeline_images_per_sec": _pipeline_rate(input_shape, batch_size),
      "train_mflops_per_image": step_flops / 1e6,
      "gflops_per_sec": jax_median * step_flops / 1e9,
      "fraction_of_peak": jax_median * step_flops / 1e9 / peak_gflops,
      "torch_images_per_sec": None,
      "ratio": None,
  }
  if torch_rates:
    torch_median = statistics.median(torch_rates)
    record.update(
        torch_images_per_sec=torch_median,
        torch_spread=_summary(torch_rates),
        ratio=jax_median / torch_median,
        torch_gflops_per_sec=torch_median * train_flops / 1e9,
        torch_fraction_of_peak=torch_median * train_flops / 1e9 / peak_gflops)
  return record


def _machine_info(compare_torch: bool) -> dict[str, object]:
  info: dict[str, object] = {
      "platform": platform.platform(),
      "processor": platform.processor(),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
      "cpu_runtime": cpu_runtime.settings(),
      "fast_ops": manifest.fast_ops_formulation(),
      "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", ""),
  }
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    info["cpu_model"] = names[0] if names else ""
  except OSError:
    pass
  try:
    info["load_average"] = list(os.getloadavg())
  except OSError:
    pass
  if compare_torch:
    import torch  # pylint: disable=g-import-not-at-top
    info["torch"] = torch.__version__
  return info


def main(argv: list[str]) -> None:
  del argv
  cli.configure_process(cache=False)  # compile_seconds is a compilation, not a cache load
  if FLAGS.models == ["all"]:
    FLAGS.models = [m for m in models.model_names()
                    if m != "tiny_cnn" and m not in timed_step.SCENE_MODELS]
  unknown = [m for m in FLAGS.models if m not in models.MODELS]
  if unknown:
    cli.fail(f"--models has unknown model(s) {unknown}; expected some of {models.model_names()}")
  section = config_lib.get_config().optimizer
  section.name, section.sam_base = FLAGS.optimizer, FLAGS.sam_base
  try:
    optimizers.validate(section)
  except ValueError as e:
    cli.fail(f"--optimizer/--sam_base: {e}")
  peak = _matmul_peak_gflops()
  peak_gflops = max(peak.values())
  result: dict[str, object] = {
      "machine": _machine_info(FLAGS.compare_torch),
      "devices": len(jax.devices()),
      "batch_size": FLAGS.batch_size,
      "windows": FLAGS.windows,
      "matmul_peak": peak,
      "models": {},
  }
  if FLAGS.compare_torch:
    import torch  # pylint: disable=g-import-not-at-top
    result["torch_threads"] = torch.get_num_threads()
  for name in FLAGS.models:
    logging.info("Benchmarking %s", name)
    record = benchmark_model(
        name, batch_size=FLAGS.batch_size, windows=FLAGS.windows,
        steps_per_window=FLAGS.steps_per_window,
        requested_microbatches=FLAGS.microbatches, implementation=FLAGS.fast_ops,
        compare_torch=FLAGS.compare_torch, donate=FLAGS.donate, peak_gflops=peak_gflops,
        optimizer=FLAGS.optimizer, sam_base=FLAGS.sam_base)
    result["models"][name] = record
    torch_part = (f", torch {record['torch_images_per_sec']:.0f} img/s, ratio {record['ratio']:.2f}"
                  if record["ratio"] is not None else "")
    print(f"{name} ({record['optimizer']}, {record['gradients_per_step']} gradient(s) per step): "
          f"cnnjax {record['cnnjax_images_per_sec']:.0f} img/s "
          f"[{record['cnnjax_spread']['min']:.0f}-{record['cnnjax_spread']['max']:.0f}]"
          f"{torch_part}; compile {record['compile_seconds']:.1f} s; "
          f"eval {record['eval_images_per_sec']:.0f} img/s; "
          f"pipeline {record['pipeline_images_per_sec']:.0f} img/s; "
          f"{record['gflops_per_sec']:.1f} GFLOP/s = {100 * record['fraction_of_peak']:.0f}% "
          f"of peak {peak_gflops:.0f}", flush=True)
  if FLAGS.output_json:
    with open(FLAGS.output_json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
