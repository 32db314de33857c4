"""Every config key cnnjax knows, each with its one default.

Experiment configs import this module and override only what differs, so a key
never has two defaults. `python -m experiments.main` locks the config: an
override of a key that is not listed here is refused.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # Data.
  c.dataset = "digits"        # digits | mnist | fashion_mnist | cifar10 | cifar100 | svhn_cropped
  c.data_dir = ""             # "" means $CNNJAX_DATA_DIR, else ~/tensorflow_datasets
  c.validation_fraction = 0.1  # carved deterministically from the train split
  c.augment = ml_collections.ConfigDict(dict(
      crop_padding=0,         # random crop after zero padding by this many pixels (a shift)
      flip=False,             # random horizontal flip
      rotation_degrees=0.0,   # random rotation in [-d, d]
      scale=0.0,              # random zoom in [1 - s, 1 + s]
      cutout=0,               # side of a zeroed square at a random place (0 = off)
  ))

  # Model.
  c.model = "bn_cnn"
  c.dropout_rate = config_dict.placeholder(float)  # None = the model's own default
  c.dtype = "float32"         # compute dtype: float32 | bfloat16 (parameters stay float32)

  # Budget.
  c.num_epochs = 30
  c.num_train_steps = 0       # > 0 overrides num_epochs
  c.batch_size = 32           # global batch, over all devices and processes
  c.eval_batch_size = 512
  c.seed = 0

  # Loss: `name` plus only the options that loss accepts (see README, "Losses").
  c.loss = ml_collections.ConfigDict(dict(
      name="sparse_categorical_cross_entropy",
      label_smoothing=config_dict.placeholder(float),  # None = the loss's default (0)
  ))

  # Optimizer (see README, "Optimizers").
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam",
      learning_rate=config_dict.placeholder(float),  # None = the optimizer's default
      momentum=config_dict.placeholder(float),       # None = the optimizer's default
      b1=config_dict.placeholder(float),
      b2=config_dict.placeholder(float),
      eps=config_dict.placeholder(float),
      schedule="constant",    # constant | cosine | warmup_cosine | step | exponential |
                              # linear | onecycle | cosine_restarts
      warmup_steps=0,         # linear warmup from 0, in optimizer updates
      end_learning_rate_factor=0.0,  # final lr = factor * lr (cosine, linear, exponential)
      step_boundaries=(0.5, 0.75),   # fractions of training (step schedule)
      step_factor=0.1,
      restart_period_fraction=0.25,  # cosine_restarts: cycle length / training (whole cycles)
      weight_decay=config_dict.placeholder(float),   # decoupled, kernels; None = optimizer default
      l2=0.0,                 # coupled: 0.5 * l2 * ||w||^2 added to the loss (kernels only)
      clip_global_norm=0.0,   # 0 = off
      clip_value=0.0,         # 0 = off
      grad_accum_steps=1,     # average k micro-batch gradients per update
      ema_decay=0.0,          # > 0: evaluate with an EMA of the parameters
      skip_nonfinite=False,   # skip updates with a NaN/inf gradient (counted in the state)
  ))

  # Devices.
  c.parallel = "auto"         # auto | none | pmap | sharded
  c.bn_sync = "global"        # global | per_device
  c.distributed = False       # call jax.distributed.initialize (auto on SLURM/TPU/MPI)
  c.microbatches = 0          # split the per-device batch in the step; 0 = auto (see steps.py)

  # Bookkeeping.
  c.log_every_steps = 50
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 0  # 0 = only at the end of each epoch
  c.keep_checkpoints = 2
  c.on_nonfinite = "stop"     # stop | skip | rollback
  c.max_consecutive_nonfinite = 10
  c.rollback_lr_factor = 0.5
  c.progress = "auto"         # auto | bar | log | none
  return c
