"""Workload: one-digit scenes (embedded), loc_cnn, smooth L1 + class CE, 2,000 training
scenes, batch 32, 248 steps (4 epochs), constant rate.

Target: validation mean IoU >= TARGET, the median over seeds 0-2 of the best validation
mean IoU of the reference run (AdamW 1e-3, the localization recipe's optimizer, constant
rate, the same budget), measured with
`python -m experiments.benchmark_optimizers --set_targets` on the 2-core CPU.
"""

import ml_collections

from experiments.configs import localization
from experiments.configs import workloads

MEASURED = (0.7614, 0.7585, 0.7484)
TARGET = 0.7585


def get_config() -> ml_collections.ConfigDict:
  base = localization.get_config()
  base.train_subset = 2000
  base.num_epochs = 0
  base.num_train_steps = 248
  return workloads.make("scenes_localization",
                        "one-digit scenes (2,000), loc_cnn, batch 32, 248 steps", base,
                        target=TARGET, reference=("adamw", 1e-3, MEASURED))
