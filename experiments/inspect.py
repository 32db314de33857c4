r"""Layer table (and optionally activation statistics) of a cnnjax model.

    python -m experiments.inspect --config=experiments/configs/default.py
    python -m experiments.inspect --config=experiments/configs/default.py \
        --model=resnet20 --input_shape=32,32,3 --activations

The model and input shape come from the config (``config.model``, and the image
shape of ``config.dataset``); ``--model`` and ``--input_shape`` override them. The
output width is what ``config.task`` asks of the model (`cnnjax.tasks.Task.output_size`:
the classes for classification, 4 + classes for localization, ...).
The table lists every submodule call with its output shape, its own parameters
and its forward FLOPs per example (2 x multiply-adds of convs and dense layers).

``--activations`` also prints each layer's output mean, std and fraction of
zeros for one batch, using freshly initialized parameters (seed ``config.seed``)
in evaluation mode. The batch is the first ``--batch_size`` real images when the
dataset is ``digits`` (embedded in scikit-learn, pixels scaled to [0, 1]) and the
shape matches, otherwise uniform random pixels in [0, 1); the output says which.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from cnnjax import inspection, models, tasks
from cnnjax.data import catalog
from cnnjax.inspection import parse_shape
from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/default.py",
                                          "Experiment config file.")
_MODEL = flags.DEFINE_string("model", None, "Model name; default: config.model.")
_INPUT_SHAPE = flags.DEFINE_list(
    "input_shape", None, "H,W,C of one image; default: the config dataset's image shape.")
_ACTIVATIONS = flags.DEFINE_bool("activations", False, "Also print activation statistics.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images for --activations.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and library logs.")


def sample_batch(dataset: str, shape: tuple[int, int, int], n: int,
                 seed: int) -> tuple[np.ndarray, str]:
  """Returns (images [n, *shape], description of where they came from)."""
  if dataset == "digits" and shape == (8, 8, 1):
    from sklearn.datasets import load_digits  # embedded in scikit-learn: no download
    images = load_digits().images[:n].astype(np.float32) / 16.0
    return images[..., None], f"the first {len(images)} sklearn digits images, scaled to [0, 1]"
  from cnnjax.data import builders, scenes  # pylint: disable=g-import-not-at-top
  scene_builder = {"digit_scenes": builders.DigitScenes,
                   "digit_scenes_single": builders.DigitScenesSingle}.get(dataset)
  if scene_builder is not None and shape == (*scene_builder.SPEC.canvas, 1):
    digits, labels = builders.digits_arrays()["test"]
    composed = scenes.compose(digits, labels, n, scene_builder.SPEC, key=seed)
    return (composed["image"].astype(np.float32) / 255.0,
            f"{n} {dataset} scenes composed from the sklearn digits test split (key {seed}), "
            "scaled to [0, 1]")
  rng = np.random.default_rng(seed)
  return (rng.random((n, *shape), dtype=np.float32),
          f"{n} uniform random images in [0, 1) (no real data used)")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  cli.configure_process()
  config = cli.config_value(_CONFIG)
  info = catalog.dataset_info(config.dataset)
  name = _MODEL.value or config.model
  try:
    outputs = tasks.get_task(config.task, info).output_size
    shape = parse_shape(_INPUT_SHAPE.value) if _INPUT_SHAPE.value else info.image_shape
    model = models.get_model(name, num_classes=outputs, dtype=config.dtype,
                             dropout_rate=config.dropout_rate)
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  except (ValueError, TypeError) as e:  # unknown model, bad shape, input too small
    cli.fail(str(e), exc=e)
  rows = inspection.layer_table(model, shape, variables=variables)
  print(f"{name} on {'x'.join(map(str, shape))} inputs, {outputs} outputs for task "
        f"{config.task!r} (dtype {config.dtype})")
  print(inspection.format_table(
      rows, batch_stats=inspection.count_params(variables.get("batch_stats", {}))))

  if _ACTIVATIONS.value:
    images, source = sample_batch(config.dataset, shape, _BATCH_SIZE.value, config.seed)
    variables = jax.jit(lambda x: model.init(jax.random.key(config.seed), x, train=False))(
        jnp.asarray(images[:1]))
    stats = inspection.activation_stats(model, variables, jnp.asarray(images))
    print(f"\nActivations: freshly initialized parameters (seed {config.seed}), evaluation "
          f"mode, input: {source}.")
    print(inspection.format_activations(stats))


if __name__ == "__main__":
  cli.run(main)
