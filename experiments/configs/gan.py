"""A DCGAN on digits (embedded): non-saturating loss, Adam for both networks, generator EMA.

    python -m experiments.main --config=experiments/configs/gan.py

Width-16 DCGAN pair (55,410 parameters), batch 32, Adam 5e-4 with b1 = 0.5 for both
networks (Radford et al.'s betas, a higher rate for these small networks), an EMA of the
generator's weights (0.999) for evaluation, 150 epochs (6,000 steps of each network),
validated (and a sample grid written) every 5 epochs.

Expected, as measured (2-core CPU; seeds 0, 1, 2; mean +- std), test split (360 images) in the features
of the cached reference classifier (bn_cnn, test accuracy 0.9972):

    Fréchet distance    17.72 +- 0.94  (floor, train vs test: 8.72; step 0: 415 +- 13)
    distance / floor     2.03 +- 0.11
    mean confidence     0.915 +- 0.004 (on the test images: 0.993)
    classes covered     10 in every seed (smallest class share 0.073 +- 0.005)

Wall 89, 72, 75 s for seeds 0, 1, 2 on the idle machine, each from an empty data
directory (so including training the reference classifier), 120-148 s of CPU time, 41-42
s of GAN training; 3 min 18 s to 9 min 43 s earlier under a load average of 6-13.
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
