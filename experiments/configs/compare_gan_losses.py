"""GAN losses on the same DCGAN pair, optimizers and data, with and without R1, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_gan_losses.py

Digits (embedded), the gan.py recipe (width-16 DCGAN, batch 32, Adam 5e-4 / b1 0.5 for
both networks, generator EMA 0.999) for 20 epochs instead of 150: non-saturating, hinge
and least-squares losses, each without and with the R1 penalty (gamma 1). The 18 runs are
trained one after another (``vmap=False``): on the 2-core CPU a vmapped group of GAN steps
ran ~4x slower per run-step than single runs (6 runs: ~30 s per epoch vs ~1.3 s per
single-run epoch), and it would compute the R1 term for every run of the group.
Ranked by the test Fréchet distance, lower is better.

Measured (idle 2-core CPU: 247 s wall for the command; compile 96 s, training 134 s,
evaluation 16 s), after 20 epochs, mean +- std over seeds 0, 1, 2 (test Fréchet distance;
floor 8.72, step 0 ~415; classes covered per seed):

    non-saturating + R1    176.3 +- 19.9   8, 8, 6
    hinge + R1             179.2 +- 11.4   8, 8, 6
    least squares + R1     194.7 +- 16.5   6, 8, 5
    least squares          200.1 +- 31.5   6, 6, 6
    hinge                  205.5 +- 10.6   8, 6, 6
    non-saturating         222.0 +- 49.9   8, 4, 5

No margin exceeds the seed spread (winner vs runner-up Welch t = -0.22, critical 3.08;
winner vs last t = -1.47, critical 3.46). At 800 steps every setting is still far from
the 150-epoch gan.py result (17.7) and misses classes.
"""

import ml_collections

from experiments.configs import gan


def get_config() -> ml_collections.ConfigDict:
  base = gan.get_config()
  base.num_epochs = 20
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
  c.vmap = False
  return c
