"""Segmentation losses on the same FCN, optimizer and scenes, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_segmentation_losses.py

15 runs of `segmentation.py` (2 epochs each) in one vmapped program. Not measured yet:
one run of that config takes 70 s of CPU time (user + sys) on the 2-core machine, so
the study needs about 15 x 70 s = 18 CPU-minutes before vmapping's savings: about 9
minutes of wall time on both cores of an otherwise idle machine, at the edge of a
10-minute study; on the shared machine it could not be run in the time available.
"""

import ml_collections

from experiments.configs import segmentation


def get_config() -> ml_collections.ConfigDict:
  base = segmentation.get_config()
  base.parallel = "none"
  base.progress = "none"

  c = ml_collections.ConfigDict()
  c.title = "Segmentation losses on digit scenes"
  c.base = base
  c.optimizers = ()
  c.learning_rates = ()
  c.losses = (
      "sparse_categorical_cross_entropy",
      "focal:gamma=2.0",
      "dice",
      "tversky:alpha=0.3,beta=0.7",
      "dice_cross_entropy",
  )
  c.seeds = (0, 1, 2)
  c.target = 0.8
  return c
