"""The sources' eight optimizers, each at its source-default learning rate, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_optimizers.py

Digits (embedded), bn_cnn, batch 32, plain cross-entropy, constant learning rate, no weight
decay, +-1 pixel shifts; 10 epochs (the default recipe trains 30). The 24 runs share one
compiled program (the optimizer a value in its state, the parameters one vector for it)
and train two at a time, one per core (strategy auto = lanes): 36-39 s wall on the idle
2-core CPU, 106-116 s as 8 vmapped groups in the same ten minutes (docs/studies.md, "The
strategies side by side").
Expected: the adaptive methods at their defaults (adam, nadam, adamax, rmsprop) and
momentum/nesterov reach ~98-99% test accuracy; plain sgd at 0.01 is clearly behind after
10 epochs. See docs/studies.md for a recorded run.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  base = default.get_config()
  base.num_epochs = 10
  base.parallel = "none"
  base.progress = "none"
  base.loss.label_smoothing = 0.0
  base.optimizer.schedule = "constant"
  base.optimizer.learning_rate = None   # each optimizer's own (source) default
  base.optimizer.weight_decay = None    # each optimizer's own default (0 for these eight)
  # 72 divides the 144 validation and 360 test images: no padded rows are evaluated (the
  # default 512 pads validation 3.6x); sums over batches give the same metrics.
  base.eval_batch_size = 72

  c = ml_collections.ConfigDict()
  c.title = "Optimizers on digits"
  c.base = base
  c.optimizers = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamax",
                  "nadam")
  c.learning_rates = ()
  c.losses = ("sparse_categorical_cross_entropy",)
  c.seeds = (0, 1, 2)
  c.target = 0.97
  return c
