"""Box losses for localization on the same CNN, optimizer and scenes, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_box_losses.py

21 runs of `localization.py` (4 epochs each) in one vmapped program. Not measured to the
end: on the shared 2-core machine (load average 5-7, `nice -n 10`) its first epoch took
612 s, compilation included (validation mean IoU 0.720 averaged over the 21 runs, 0.574
to 0.770), and the run was stopped there after 1,128 s wall and 812 s of CPU time; the
whole study would take over 30 minutes there, against a 10-minute goal.
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
