"""Metric learning on digits (embedded): embedding_cnn, triplet loss with batch-hard mining.

    python -m experiments.main --config=experiments/configs/metric_learning.py

Expected: see README, "Metric learning".
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.task = "metric_learning"
  c.model = "embedding_cnn"
  c.num_epochs = 20
  c.loss.label_smoothing = None
  c.loss.name = "triplet_margin"
  c.loss.margin = 0.2
  c.loss.mining = "batch_hard"
  return c
