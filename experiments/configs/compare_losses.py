"""Classification losses on the same model, optimizer and data, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_losses.py

Digits (embedded), bn_cnn, adam 1e-3 (constant), batch 32, +-1 pixel shifts, 6 epochs (the
default recipe trains 30). Losses: cross-entropy, label-smoothed cross-entropy (0.1), focal
(gamma 1, 2, 5; alpha off), squared error on softmax outputs (mean_squared_error through
for_classification), multiclass hinge (multi_margin, Crammer-Singer style categorical_hinge).
All 24 runs share one compiled program (the loss is chosen per run inside it; on CPU the
runs go one after another); about 3-4 minutes on a busy 2-core CPU. Expected: the cross-entropy family (CE, smoothed CE,
focal) within a few tenths of a point of each other near 98-99%; squared error on softmax
learns more slowly.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  base = default.get_config()
  base.num_epochs = 6
  base.parallel = "none"
  base.progress = "none"
  base.optimizer.name = "adam"
  base.optimizer.learning_rate = 1e-3
  base.optimizer.schedule = "constant"
  base.optimizer.weight_decay = None

  c = ml_collections.ConfigDict()
  c.title = "Losses on digits"
  c.base = base
  c.optimizers = ()
  c.learning_rates = ()
  c.losses = (
      "sparse_categorical_cross_entropy",
      "sparse_categorical_cross_entropy:label_smoothing=0.1",
      "focal:gamma=1.0,alpha=None",
      "focal:gamma=2.0,alpha=None",
      "focal:gamma=5.0,alpha=None",
      "mean_squared_error",
      "multi_margin",
      "categorical_hinge",
  )
  c.seeds = (0, 1, 2)
  c.target = 0.97
  return c
