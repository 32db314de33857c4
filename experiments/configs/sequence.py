"""Reading the 1-3 digits of a scene left to right (embedded, offline): seq_reader.

    python -m experiments.main --config=experiments/configs/sequence.py

Expected, as measured on the idle 2-core machine, seeds 0-2, each from an empty data
directory, test split: whole-sequence accuracy 0.982 ± 0.003 (0.9795, 0.9820, 0.9860;
floor 0.90), digit accuracy 0.991 ± 0.002, length accuracy 1.000. Wall 63, 48, 55 s
(seed 0 with an empty compilation cache), 32-36 s of it training. Details: README,
"Measured results of the three configs".
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
