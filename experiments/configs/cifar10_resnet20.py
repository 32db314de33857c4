"""CIFAR-10 ResNet-20 with He et al. (2016)'s recipe: SGD momentum 0.9, lr 0.1
divided by 10 at 50% and 75% of training, L2 1e-4, batch 128, ~182 epochs
(64k steps), 4-pixel random crops and horizontal flips.

    python -m cnnjax.data.prepare --dataset=cifar10 [--from_dir=DIR]   # once
    python -m experiments.main --config=experiments/configs/cifar10_resnet20.py

Expected: about 0.9125 test accuracy (8.75% error, Table 6 of "Deep Residual
Learning for Image Recognition"); hours on one GPU, far too long for a laptop CPU.
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.dataset = "cifar10"
  c.model = "resnet20"
  c.num_train_steps = 64_000
  c.batch_size = 128
  c.augment.crop_padding = 4
  c.augment.flip = True
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.schedule = "step"
  c.optimizer.step_boundaries = (0.5, 0.75)
  c.optimizer.step_factor = 0.1
  c.optimizer.l2 = 1e-4
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  return c
