"""Localization of one digit per scene (embedded, offline): loc_cnn, smooth L1 + class CE.

    python -m experiments.main --config=experiments/configs/localization.py

Expected, as measured on the idle 2-core machine, seeds 0-2, each from an empty data
directory, test split: mean IoU 0.831 ± 0.005 (0.8355, 0.8324, 0.8256; floor 0.80),
class accuracy 0.9755 for each seed (floor 0.95), IoU >= 0.5 for 0.998, >= 0.75 for
0.872 ± 0.019. Wall 41, 32, 33 s (seed 0 with an empty compilation cache), 14-17 s of it
training. Details: README, "Measured results of the three configs".
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
