"""Datasets for cnnjax: tfds data sources read into memory, batched deterministically.

    ds = cnnjax.data.load(config)
    for batch in ds.train_batches(epoch):   # {"image": f32 [b,H,W,C] in [0,1], "label": i32 [b]}
      ...

See docs/data.md for the datasets, the data directory and how to prepare them.

The catalog (names, shapes, classes) is plain Python; the pipeline and the tfds
sources are imported on first use of their names, so that checking a config against
the catalog does not pay for importing tensorflow_datasets and grain.
"""

from __future__ import annotations

import importlib
from typing import Any

from cnnjax.data.catalog import DATASETS, DatasetInfo, dataset_info

_LAZY = {
    "Dataset": "cnnjax.data.pipeline",
    "keyed_permutation": "cnnjax.data.permutation",
    "load": "cnnjax.data.pipeline",
    "DatasetNotFoundError": "cnnjax.data.sources",
    "resolve_data_dir": "cnnjax.data.sources",
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DATASETS", "Dataset", "DatasetInfo", "DatasetNotFoundError", "dataset_info",
           "keyed_permutation", "load", "resolve_data_dir"]
