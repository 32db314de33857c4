"""GAN losses on the same DCGAN pair, optimizers and data, with and without R1, x 3 seeds.

    python -m experiments.compare --config=experiments/configs/compare_gan_losses.py

Digits (embedded), the gan.py recipe (width-16 DCGAN, batch 32, Adam 5e-4 / b1 0.5 for
both networks, generator EMA 0.999) for 20 epochs instead of 150: non-saturating, hinge
and least-squares losses, each without and with the R1 penalty (gamma 1). The 18 runs are
trained one after another (``vmap=False``): on the 2-core CPU a vmapped group of GAN steps
ran ~4x slower per run-step than single runs (6 runs: ~30 s per epoch vs ~1.3 s per
single-run epoch), and it would compute the R1 term for every run of the group.
Ranked by the test Fréchet distance, lower is better.

Not yet measured at this size. A 2-epoch, 2-seed run of the same 6 settings (12 runs)
took 387 s on the 2-core CPU under load from other jobs (191 s of it compiling), so the
full study (18 runs of 800 steps) is estimated at 20-30 minutes under such load; after
2 epochs every setting was still at a test distance of 290-340 (step 0: 401), which
ranks nothing.
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
