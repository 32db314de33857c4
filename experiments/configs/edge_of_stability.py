"""Gradient descent at the edge of stability (Cohen et al. 2021), reproduced on digits.

    python -m experiments.main --config=experiments/configs/edge_of_stability.py

Full-batch gradient descent (batch = a fixed subset of 1,000 training digits, every step
sees all of them) on simple_cnn, a CNN without BatchNorm, with the square loss on its raw
outputs against one-hot targets (``square_loss``: ``0.5 ||f(x) - y||^2``, the loss of
Cohen et al.'s experiments), at a constant learning rate 0.02, so 2 / lr = 100. The
sharpness (top Hessian eigenvalue of the training loss on the same 1,000 examples, 8
warm-started Lanczos steps) is logged every 50 steps. What it shows: the sharpness starts
at half of 2 / lr, rises ("progressive sharpening"), then stops at 2 / lr and hovers there
while the loss keeps falling, non-monotonically (spikes at each overshoot); classical
optimisation theory (the loss decreases while sharpness < 2 / lr) does not predict that
it stops there. The plot is ``plots/diagnostics.png``; ``summary.json`` has
``sharpness_late_median`` and ``sharpness_late_ratio`` (the median of sharpness / (2 / lr)
over the second half of training).

Expected (measured on the 2-core CPU shared with other jobs, load average 8.6-10.7):
3 min 01 s wall (65 s training, 85 s diagnostics, 17 s setup); sharpness 47.0 at step 0,
99.1 at step 300, median 100.6 over steps 500-1000 (ratio 1.006 to 2 / lr = 100); final
training loss 0.09, test accuracy 0.969. Plot in README, "Curvature".
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.dataset = "digits"
  c.model = "simple_cnn"
  c.validation_fraction = 0.0
  c.train_subset = 1000
  c.batch_size = 1000           # full batch: one step per epoch
  c.augment.crop_padding = 0
  c.loss.name = "square_loss"
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.02
  c.optimizer.schedule = "constant"
  c.num_train_steps = 1000
  c.parallel = "none"
  c.log_every_steps = 100
  c.checkpoint_every_seconds = 120.0
  c.diagnostics.enabled = True
  c.diagnostics.every_steps = 50
  c.diagnostics.num_examples = 0  # every training example: the full-batch loss
  c.diagnostics.quantities = ("sharpness",)
  c.diagnostics.lanczos_iterations = 8  # warm-started from the last eigenvector
  return c
