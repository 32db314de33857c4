"""Box losses for localization on the same CNN, optimizer and scenes, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_box_losses.py

(measured below)
"""

import ml_collections

from experiments.configs import localization


def get_config() -> ml_collections.ConfigDict:
  base = localization.get_config()
  base.parallel = "none"
  base.progress = "none"

  c = ml_collections.ConfigDict()
  c.title = "Box losses on one-digit scenes"
  c.base = base
  c.optimizers = ()
  c.learning_rates = ()
  c.losses = (
      "mean_squared_error",
      "mean_absolute_error",
      "huber",
      "smooth_l1",
      "log_cosh",
      "iou",
      "giou",
  )
  c.seeds = (0, 1, 2)
  c.target = 0.7
  return c
