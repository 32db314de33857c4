"""Box losses for localization on the same CNN, optimizer and scenes, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_box_losses.py

21 runs of the `localization.py` recipe shortened to 3 epochs (675 steps), sharing one
compiled step: on CPU two runs at a time, one per core (strategy auto = lanes; the
vmapped group of 21 took 612 s for its first epoch alone on the shared machine).
Measured with the earlier default (sequential, a call per step; idle 2-core CPU: 327 s wall), test mean IoU, mean +- std over seeds 0-2: L1
0.819 +- 0.005, Huber = smooth L1 0.817 +- 0.005, log-cosh 0.814 +- 0.004, IoU 0.802 +-
0.009, MSE 0.794 +- 0.006, GIoU 0.787 +- 0.007 (winner vs runner-up Welch t = 0.45, within
the spread; the L1 family vs MSE t > 5, beyond it). README, "Box losses".
"""

import ml_collections

from experiments.configs import localization


def get_config() -> ml_collections.ConfigDict:
  base = localization.get_config()
  base.num_epochs = 3
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
