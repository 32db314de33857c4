"""Tasks: what a batch holds, how the output head is sized, the loss, the metrics.

`config.task` names one of `TASKS`; `get_task(name, info)` builds it for a dataset.
See `cnnjax.tasks.base.Task` for the interface the trainer calls.

    >>> from cnnjax.data import catalog
    >>> task = get_task("classification", catalog.dataset_info("digits"))
    >>> task.headline, task.output_size
    ('accuracy', 10)
"""

from __future__ import annotations

from cnnjax.tasks.base import Task, TaskLoss, confusion_matrix, masked_sum
from cnnjax.tasks.classification import Classification
from cnnjax.tasks.generation import Generation
from cnnjax.tasks.localization import Localization
from cnnjax.tasks.metric_learning import MetricLearning
from cnnjax.tasks.segmentation import Segmentation
from cnnjax.tasks.sequence import SequenceReading

TASKS: dict[str, type[Task]] = {
    Classification.name: Classification,
    Segmentation.name: Segmentation,
    Localization.name: Localization,
    SequenceReading.name: SequenceReading,
    MetricLearning.name: MetricLearning,
    Generation.name: Generation,
}


def names() -> list[str]:
  """The sorted task names."""
  return sorted(TASKS)


def get_task(name: str, info, *, data=None, config=None) -> Task:
  """Task ``name`` for the dataset described by ``info`` (a `cnnjax.data.DatasetInfo`).

  ``data`` (the run's loaded `cnnjax.data.Dataset`) and ``config`` (the run config) let
  the task read training-split statistics and its config sections; without them it can
  still check a loss config.

  Raises:
    ValueError: an unknown task name (the message lists the known ones).
  """
  if name not in TASKS:
    raise ValueError(f"task={name!r} is not accepted; expected one of {names()}")
  return TASKS[name](info, data=data, config=config)


__all__ = ["Classification", "Generation", "Localization", "MetricLearning", "Segmentation",
           "SequenceReading", "TASKS", "Task", "TaskLoss", "confusion_matrix", "get_task",
           "masked_sum", "names"]
