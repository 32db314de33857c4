"""Localization of one digit per scene (embedded, offline): loc_cnn, smooth L1 + class CE.

    python -m experiments.main --config=experiments/configs/localization.py

Expected: (measured below).
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.task = "localization"
  c.dataset = "digit_scenes_single"
  c.model = "loc_cnn"
  c.num_epochs = 4
  c.batch_size = 32
  c.eval_batch_size = 500
  c.loss.name = "smooth_l1"
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = 5e-4
  return c
