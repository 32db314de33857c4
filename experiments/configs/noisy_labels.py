"""Losses for noisy labels on real MNIST digits (mnist_5k), x 3 seeds.

    python -m experiments.compare --config=experiments/configs/noisy_labels.py

mnist_5k (embedded: 4,000 train images, of which 400 validation, and 1,000 clean test
images), simple_cnn, Adam 1e-3, batch 64, 12 epochs, runs one at a time. Conditions:
clean, symmetric noise 0.2 / 0.4 / 0.6 and pairflip 0.4 on the train and validation
labels (`label_noise.seed=0`: the same flipped examples for every seed and loss). Losses:
cross-entropy, GCE (q=0.7), SCE (alpha=0.1, beta=1), NCE+RCE (alpha=beta=1), soft
bootstrapping (beta=0.95), MAE (the mean over classes of |softmax - onehot|). Each run is
also tested at its epoch of best *noisy* validation accuracy ("selected"); nothing is
chosen on the test split. Expected: see README, "Where the loss matters".
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


def mnist_5k_base(num_epochs: int = 12) -> ml_collections.ConfigDict:
  """The common recipe of the mnist_5k studies."""
  c = base_config.get_config()
  c.dataset = "mnist_5k"
  c.model = "simple_cnn"
  c.num_epochs = num_epochs
  c.batch_size = 64
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
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
  c.columns = ("test_accuracy", "test_ece", "test_ts_ece")
  c.vmap = False
  return c
