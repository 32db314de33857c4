"""A DCGAN on digits (embedded): non-saturating loss, Adam for both networks, generator EMA.

    python -m experiments.main --config=experiments/configs/gan.py

Width-16 DCGAN pair (55,410 parameters), batch 32, Adam 5e-4 with b1 = 0.5 for both
networks (Radford et al.'s betas, a higher rate for these small networks), an EMA of the
generator's weights (0.999) for evaluation, 150 epochs (6,000 steps of each network),
validated (and a sample grid written) every 5 epochs.
Expected: see README, "Generation".
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.task = "generation"
  c.dataset = "digits"
  c.model = "dcgan"
  c.gan.width = 16
  c.num_epochs = 150
  c.batch_size = 32
  c.loss.name = "gan_discriminator"
  for section in (c.optimizer, c.gan.discriminator_optimizer):
    section.name = "adam"
    section.learning_rate = 5e-4
    section.b1 = 0.5
  c.optimizer.ema_decay = 0.999
  c.eval_every_epochs = 5  # each validation costs ~1 s (1,293 samples) and writes a grid
  return c
