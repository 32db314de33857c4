"""Segmentation of digit scenes (embedded, offline): an FCN, per-pixel cross-entropy.

    python -m experiments.main --config=experiments/configs/segmentation.py

Expected, as measured on the idle 2-core machine, seeds 0-2, each from an empty data
directory, test split: mean IoU 0.917 ± 0.007 over the 11 classes (0.9259, 0.9121,
0.9140; floor 0.85), mean Dice 0.957 ± 0.004, pixel accuracy 0.994. Wall 61, 40, 46 s
(seed 0 with an empty compilation cache), 24-31 s of it training. Details: README,
"Measured results of the three configs".
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.task = "segmentation"
  c.dataset = "digit_scenes"
  c.model = "fcn"
  c.num_epochs = 2
  c.batch_size = 32
  c.eval_batch_size = 250
  c.loss.name = "sparse_categorical_cross_entropy"
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = 5e-4
  return c
