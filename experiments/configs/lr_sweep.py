"""Learning-rate sensitivity: sgd, momentum and adam over four rates each, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/lr_sweep.py

Digits (embedded), bn_cnn, plain cross-entropy, constant rate, batch 32, 4 epochs; 36 runs
in 3 vmapped groups of 12 (one per optimizer: the rate is a value in the optimizer state),
about 3-4 minutes on a busy 2-core CPU. Expected: adam peaks near 1e-3 and degrades (or
diverges) at 0.1-1; sgd wants the largest rates; momentum sits between (its effective
step is 10x sgd's).
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  base = default.get_config()
  base.num_epochs = 4
  base.parallel = "none"
  base.progress = "none"
  base.loss.label_smoothing = 0.0
  base.optimizer.schedule = "constant"
  base.optimizer.weight_decay = None

  c = ml_collections.ConfigDict()
  c.title = "Learning-rate sweep on digits"
  c.base = base
  c.optimizers = ("sgd", "momentum", "adam")
  c.learning_rates = (1e-3, 1e-2, 1e-1, 1.0)
  c.losses = ("sparse_categorical_cross_entropy",)
  c.seeds = (0, 1, 2)
  c.target = 0.97
  return c
