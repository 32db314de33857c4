"""GAN losses on the same DCGAN pair, optimizers and data, with and without R1, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_gan_losses.py

Digits (embedded), the gan.py recipe (width-16 DCGAN, batch 32, Adam 5e-4 / b1 0.5 for
both networks, generator EMA 0.999) for 20 epochs instead of 150: non-saturating, hinge
and least-squares losses, each without and with the R1 penalty (gamma 1). The 18 runs are
trained one after another (``vmap=False``): on the 2-core CPU a vmapped group of GAN steps
ran ~4x slower per run-step than single runs (6 runs: ~30 s per epoch vs ~1.3 s per
single-run epoch), and it would compute the R1 term for every run of the group.
Ranked by the test Fréchet distance, lower is better.

Measured (2-core CPU, load average 5-9 from other jobs: 565 s wall for the command, 412 s
of it training, 65 s compiling; 379 s of CPU time), after 20 epochs, mean +- std over
seeds 0, 1, 2 (test Fréchet distance; floor 8.72, step 0 ~415; classes covered per seed):

    non-saturating + R1    176.5 +- 22.1   8, 8, 7
    least squares + R1     193.3 +- 13.8   6, 8, 6
    hinge + R1             196.0 +- 34.6   8, 4, 5
    least squares          199.5 +- 23.9   5, 6, 7
    hinge                  218.1 +- 28.6   7, 4, 7
    non-saturating         226.2 +- 27.9   6, 4, 7

No margin exceeds the seed spread (winner vs runner-up Welch t = -1.11, critical 3.00;
winner vs last t = -2.42, critical 2.83). At 800 steps every setting is still far from
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
