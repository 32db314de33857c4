"""Reading the 1-3 digits of a scene left to right (embedded, offline): seq_reader.

    python -m experiments.main --config=experiments/configs/sequence.py

Expected: (measured below).
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.task = "sequence"
  c.dataset = "digit_scenes"
  c.model = "seq_reader"
  c.num_epochs = 3
  c.batch_size = 32
  c.eval_batch_size = 500
  c.loss.name = "sequence_cross_entropy"
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = 5e-4
  return c
