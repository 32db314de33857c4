"""Segmentation losses on the same U-Net, optimizer and scenes, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_segmentation_losses.py

(measured below)
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
