"""Workload: mnist_5k (embedded), lenet5, batch 64, 350 steps (6.25 epochs), constant rate.

Target: validation accuracy (400 images) >= TARGET, the median over seeds 0-2 of the best
validation accuracy of the reference run (Adam 1e-3, constant rate, the same budget),
measured with `python -m experiments.benchmark_optimizers --set_targets` on the 2-core CPU.
"""

import ml_collections

from experiments.configs import base as base_config
from experiments.configs import workloads

MEASURED = (0.955, 0.9525, 0.96)
TARGET = 0.955


def get_config() -> ml_collections.ConfigDict:
  base = base_config.get_config()
  base.dataset = "mnist_5k"
  base.model = "lenet5"
  base.batch_size = 64
  base.num_train_steps = 350
  base.loss.label_smoothing = 0.0
  return workloads.make("mnist5k_lenet5", "mnist_5k, lenet5, batch 64, 350 steps", base,
                        target=TARGET, reference=("adam", 1e-3, MEASURED))
