"""cnnjax.training.checkpoint: which checkpoints are kept, with orbax's real manager."""

import jax.numpy as jnp
import numpy as np

from cnnjax.training import tracking
from cnnjax.training.checkpoint import Checkpointer


def _kept(tmp_path, values, goal):
  """Saves one checkpoint per epoch with validation ``values`` the way the loop does:
  the metric goes with a checkpoint only when it is a new best."""
  ckpt = Checkpointer(tmp_path / "checkpoints", keep=1, goal=goal)
  best = tracking.Best(goal)
  for epoch, value in enumerate(values, start=1):
    improved = best.update(value, epoch)
    ckpt.save(epoch * 10, {"w": jnp.full((3,), float(epoch))}, {"epoch": epoch},
              value if improved else None)
  steps = ckpt.steps()
  ckpt.close()
  return steps, best


def test_a_tie_keeps_the_epoch_the_summary_names(tmp_path):
  # Epochs 2 and 3 tie at the best accuracy; the summary names epoch 2 (the first).
  steps, best = _kept(tmp_path, [0.90, 0.95, 0.95, 0.93], "max")
  assert (best.value, best.epoch) == (0.95, 2)
  assert steps == [20, 40]  # the best (epoch 2) and the latest


def test_lower_is_better_keeps_the_minimum(tmp_path):
  steps, best = _kept(tmp_path, [3.0, 2.0, 2.5, 2.0, 4.0], "min")
  assert (best.value, best.epoch) == (2.0, 2)
  assert steps == [20, 50]


def test_restore_latest_round_trips_the_state(tmp_path):
  ckpt = Checkpointer(tmp_path / "c", keep=2)
  state = {"w": jnp.arange(4.0), "step": jnp.int32(7)}
  ckpt.save(7, state, {"history": [{"epoch": 1}]})
  step, restored, meta = ckpt.restore_latest(state)
  ckpt.close()
  assert step == 7 and meta == {"history": [{"epoch": 1}]}
  np.testing.assert_array_equal(restored["w"], state["w"])
