"""GAN losses on the same DCGAN pair, optimizers and data, with and without R1, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_gan_losses.py

Digits (embedded), the gan.py recipe (width-16 DCGAN, batch 32, Adam 5e-4 / b1 0.5 for
both networks, generator EMA 0.999) for 30 epochs instead of 150: non-saturating, hinge
and least-squares losses, each without and with the R1 penalty (gamma 1). All 18 runs
are one vmapped group (the R1 term is computed once per step for the lanes that use it).
Ranked by the test Fréchet distance, lower is better. Measured result: README,
"Generation".
"""

import ml_collections

from experiments.configs import gan


def get_config() -> ml_collections.ConfigDict:
  base = gan.get_config()
  base.num_epochs = 30
  base.eval_every_epochs = 10
  base.parallel = "none"
  base.progress = "none"

  c = ml_collections.ConfigDict()
  c.title = "GAN losses on digits"
  c.base = base
  c.optimizers = ()
  c.learning_rates = ()
  c.losses = tuple(f"{name}{options}" for name in (
      "gan_discriminator", "gan_hinge_discriminator", "lsgan_discriminator")
                   for options in ("", ":r1_gamma=1.0"))
  c.seeds = (0, 1, 2)
  c.target = 60.0
  return c
