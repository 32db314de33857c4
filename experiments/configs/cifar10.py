"""CIFAR-10 with the sources' Keras recipe: keras_cifar_cnn (122,570 parameters),
Adam 1e-3, sparse categorical cross-entropy from logits, batch 32, 10 epochs.

    python -m cnnjax.data.prepare --dataset=cifar10 [--from_dir=DIR]   # once
    python -m experiments.main --config=experiments/configs/cifar10.py

Expected: about 0.70 test accuracy, the figure the TensorFlow CNN tutorial reports
for this exact network and recipe (not re-measured here: no dataset download on
the development machine).
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.dataset = "cifar10"
  c.model = "keras_cifar_cnn"
  c.num_epochs = 10
  c.batch_size = 32
  c.loss.name = "sparse_categorical_cross_entropy"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  return c
