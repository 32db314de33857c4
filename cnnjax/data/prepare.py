r"""Prepares a dataset as array_record under the data directory, without TensorFlow.

From raw archives already on disk (no network at all):

    python -m cnnjax.data.prepare --dataset=cifar10 --from_dir=/path/to/archives

On a machine with internet, the same archives are fetched first (into
``<data_dir>/downloads/cnnjax/<dataset>``):

    python -m cnnjax.data.prepare --dataset=cifar10

The files each dataset needs are listed in docs/data.md. The result is tfds's
own layout (``<data_dir>/<name>/<version>/``), read back with
``tfds.data_source(name, data_dir=...)`` by `cnnjax.data.load`.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request

from cnnjax.data import builders
from cnnjax.data import catalog
from cnnjax.data import sources


def download_raw(name: str, dest: str, *, timeout_s: float = 60.0) -> str:
  """Fetches the raw archives of ``name`` into ``dest`` (skipping files already there).

  Single attempt per file, no retries: a machine without internet fails at once.
  """
  os.makedirs(dest, exist_ok=True)
  for url in builders.RAW_ARCHIVE_URLS[name]:
    path = os.path.join(dest, url.rsplit("/", 1)[-1])
    if os.path.exists(path):
      continue
    print(f"Downloading {url}", file=sys.stderr)
    tmp = path + ".part"
    with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as f:
      shutil.copyfileobj(response, f)
    os.replace(tmp, path)
  return dest


def prepare(name: str, data_dir: str = "", from_dir: str | None = None, *,
            overwrite: bool = False) -> str:
  """Builds ``name`` as an array_record tfds dataset and returns its directory.

  Args:
    name: a catalog dataset name.
    data_dir: target data directory ("" -> `sources.resolve_data_dir`).
    from_dir: directory holding the raw archives (see docs/data.md). None
      downloads them first (needs internet).
    overwrite: rebuild even if the dataset is already prepared.

  Returns:
    The prepared version directory, e.g. ``<data_dir>/cifar10/3.0.2``.
  """
  catalog.dataset_info(name)
  data_dir = sources.resolve_data_dir(data_dir)
  if name in sources.EMBEDDED:
    return os.fspath(sources.ensure_embedded(name, data_dir).data_dir)
  if from_dir is None:
    from_dir = download_raw(name, os.path.join(data_dir, "downloads", "cnnjax", name))
  from_dir = os.path.abspath(os.path.expanduser(from_dir))
  if not os.path.isdir(from_dir):
    raise FileNotFoundError(f"--from_dir={from_dir} is not a directory")
  builder = builders.RAW_ARCHIVE_BUILDERS[name](data_dir=data_dir, file_format="array_record")
  if builder.is_prepared() and not overwrite:
    print(f"{name} is already prepared in {builder.data_dir}", file=sys.stderr)
    return os.fspath(builder.data_dir)
  if builder.is_prepared():
    shutil.rmtree(os.fspath(builder.data_dir))
    builder = builders.RAW_ARCHIVE_BUILDERS[name](data_dir=data_dir, file_format="array_record")
  with sources.quiet_preparation():
    builder.download_and_prepare(download_config=builders.offline_download_config(from_dir))
  return os.fspath(builder.data_dir)


def main(argv: list[str]) -> None:
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  del argv
  # tfds narrates every preparation at INFO/WARNING (e.g. "no dataset_info.json" before
  # the first one); shown with --verbose.
  verbose = flags.FLAGS.verbose
  logging.set_verbosity(logging.INFO if verbose else logging.ERROR)
  std_logging.getLogger("absl").setLevel(std_logging.INFO if verbose else std_logging.ERROR)
  path = prepare(flags.FLAGS.dataset, flags.FLAGS.data_dir, flags.FLAGS.from_dir or None,
                 overwrite=flags.FLAGS.overwrite)
  print(f"Prepared {flags.FLAGS.dataset} in {path}")


if __name__ == "__main__":
  from absl import app
  from absl import flags

  flags.DEFINE_enum("dataset", None, sorted(catalog.DATASETS), "Dataset to prepare.")
  flags.DEFINE_string("data_dir", "", "Target directory ('' = $CNNJAX_DATA_DIR, else "
                      "~/tensorflow_datasets).")
  flags.DEFINE_string("from_dir", "", "Directory with the raw archives; empty = download them.")
  flags.DEFINE_bool("overwrite", False, "Rebuild even if already prepared.")
  flags.DEFINE_bool("verbose", False, "Show the dataset library's log lines.")
  flags.mark_flag_as_required("dataset")
  app.run(main)
