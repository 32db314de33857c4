"""Digits (embedded, offline): a small BatchNorm CNN, AdamW, cosine decay.

    python -m experiments.main

Expected: >= 0.99 test accuracy on the 360 digits test images in well under 30 s
on a 2-core CPU (see README, "Results").
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.dataset = "digits"
  c.model = "bn_cnn"
  c.num_epochs = 30
  c.batch_size = 32
  c.augment.crop_padding = 1
  c.loss.label_smoothing = 0.1
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = 5e-4
  return c
