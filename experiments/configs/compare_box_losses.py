"""Box losses for localization on the same CNN, optimizer and scenes, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_box_losses.py

21 runs of `localization.py` (4 epochs each) in one vmapped program. Not measured yet:
one run of that config takes 45-55 s of CPU time (user + sys) on the 2-core machine, so
the study needs about 21 x 50 s = 17 CPU-minutes before vmapping's savings: about 9
minutes of wall time on both cores of an otherwise idle machine, at the edge of a
10-minute study; on the shared machine it could not be run in the time available.
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
