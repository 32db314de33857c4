"""Datasets for cnnjax: tfds data sources read into memory, batched deterministically.

    ds = cnnjax.data.load(config)
    for batch in ds.train_batches(epoch):   # {"image": f32 [b,H,W,C] in [0,1], "label": i32 [b]}
      ...

See docs/data.md for the datasets, the data directory and how to prepare them.
"""

from cnnjax.data.catalog import DATASETS, DatasetInfo, dataset_info
from cnnjax.data.pipeline import Dataset, keyed_permutation, load
from cnnjax.data.sources import DatasetNotFoundError, resolve_data_dir

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "dataset_info",
    "keyed_permutation",
    "load",
    "resolve_data_dir",
]
