"""Losses for noisy labels on real MNIST digits (mnist_5k), x 3 seeds.

    python -m experiments.compare --config=experiments/configs/noisy_labels.py

mnist_5k (embedded: 4,000 train images, of which 400 validation, and 1,000 clean test
images), lenet5, Adam 3e-3 with cosine decay, batch 128, 5 epochs (140 steps), runs one
at a time (on this CPU a vmapped group of LeNets trained 3x slower per run than
separate runs). Conditions:
clean, symmetric noise 0.2 / 0.4 / 0.6 and pairflip 0.4 on the train and validation
labels (`label_noise.seed=0`: the same flipped examples for every seed and loss). Losses:
cross-entropy, GCE (q=0.7), SCE (alpha=0.1, beta=1), NCE+RCE (alpha=beta=1), soft
bootstrapping (beta=0.95), MAE (the mean over classes of |softmax - onehot|). Each run is
also tested at its epoch of best *noisy* validation accuracy ("selected"); nothing is
chosen on the test split.

Measured (README, "Where the loss matters"; 2-core CPU shared with other jobs, load average
15-18: 39 min wall as five processes, one per condition): final test accuracy, mean of 3
seeds, at symmetric 0.4 CE 87.20, SCE 89.27, GCE 89.77 (Welch t vs CE 4.9 and 6.2); at
pairflip 0.4 CE 76.17, GCE 87.27, SCE 88.23; clean CE 92.27 and every robust loss 0.7-1.4
points lower; soft bootstrapping trains exactly as CE (its stopped-gradient target makes
its gradient 0.95 times CE's, which Adam does not see).
"""

import ml_collections

from experiments.configs import base as base_config

CONDITIONS = (
    "clean: label_noise.kind=none",
    "sym 0.2: label_noise.kind=symmetric,label_noise.rate=0.2",
    "sym 0.4: label_noise.kind=symmetric,label_noise.rate=0.4",
    "sym 0.6: label_noise.kind=symmetric,label_noise.rate=0.6",
    "pairflip 0.4: label_noise.kind=pairflip,label_noise.rate=0.4",
)


def mnist_5k_base(num_epochs: int = 5, batch_size: int = 128) -> ml_collections.ConfigDict:
  """The common recipe of the mnist_5k studies: LeNet-5, Adam 3e-3, cosine decay."""
  c = base_config.get_config()
  c.dataset = "mnist_5k"
  c.model = "lenet5"
  c.num_epochs = num_epochs
  c.batch_size = batch_size
  c.eval_batch_size = 256
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = "cosine"
  c.parallel = "none"
  c.progress = "none"
  return c


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.title = "Noisy labels on mnist_5k"
  c.base = mnist_5k_base()
  c.conditions = CONDITIONS
  c.losses = (
      "sparse_categorical_cross_entropy",
      "generalized_cross_entropy",
      "symmetric_cross_entropy",
      "nce_rce",
      "bootstrapped_cross_entropy",
      "mean_absolute_error",
  )
  c.seeds = (0, 1, 2)
  c.target = 0.9
  c.select_by = "accuracy"
  c.rank_by = "selected_test_accuracy"
  c.columns = ("selected_epoch", "test_accuracy", "test_ece", "test_nll")
  c.vmap = False
  return c
