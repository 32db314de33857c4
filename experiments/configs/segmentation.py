"""Segmentation of digit scenes (embedded, offline): an FCN, per-pixel cross-entropy.

    python -m experiments.main --config=experiments/configs/segmentation.py

Expected: (measured below).
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
