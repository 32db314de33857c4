"""Train state, pure steps, the training loop and checkpoints."""

from cnnjax.training.state import TrainState, create_train_state, num_params, run_keys
from cnnjax.training.steps import eval_step, train_step

__all__ = ["TrainState", "create_train_state", "eval_step", "num_params", "run_keys", "train_step"]
