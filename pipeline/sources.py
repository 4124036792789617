"""DataConfig -> a prepared TFDS builder -> random-access ArrayRecord sources.

"stdlib" and "text_files" are this package's builders; any other name is looked
up in the TFDS registry. A local data_dir is used as is. For a gs:// data_dir,
TFDS metadata goes through etils paths, but the ArrayRecord C++ reader and
writer only open local files (checked: writing a shard to gs:// fails with
"open() failed", reading one hangs), so the dataset is built in a local mirror
and uploaded, and read from a local mirror that is downloaded once; see
`pipeline/gcs_mirror.py`.
"""

import logging as std_logging
import os

import tensorflow_datasets as tfds
from absl import logging

from pipeline import gcs_mirror
from pipeline import text_dataset
from pipeline.config import DataConfig

DEFAULT_DATA_DIR = "~/.cache/griffin/tfds"
OWN_BUILDERS = {"stdlib": text_dataset.Stdlib, "text_files": text_dataset.TextFiles}


class _NoCustomConfigWarning(std_logging.Filter):
  """TFDS warns on each builder made from a config its class does not list;
  ours are all made that way on purpose, once per source."""

  def filter(self, record):
    return not record.getMessage().startswith("Using custom data configuration")


logging.get_absl_logger().addFilter(_NoCustomConfigWarning())


def data_dir_of(config: DataConfig) -> str:
  """The TFDS data_dir: data.data_dir, or the default local cache."""
  return config.data_dir or os.path.expanduser(DEFAULT_DATA_DIR)


def make_builder(config: DataConfig, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The (maybe unprepared) builder of `config.dataset` under `data_dir`."""
  data_dir = data_dir or data_dir_of(config)
  if config.dataset in OWN_BUILDERS:
    return OWN_BUILDERS[config.dataset](
        data_dir=data_dir, config=text_dataset.builder_config(config),
        file_format="array_record")
  try:
    return tfds.builder(config.dataset, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as error:
    raise ValueError(
        f"data.dataset={config.dataset!r} is not a registered TFDS dataset (nor "
        f"one of this package's {sorted(OWN_BUILDERS)}); check the spelling, or "
        "import the module that defines it.") from error


def prepare(config: DataConfig, build_if_missing: bool = True) -> tfds.core.DatasetBuilder:
  """The builder to read from, prepared (built once, then reused).

  `build_if_missing=False` raises instead of building: several processes must
  not build the same directory at once (see docs/data.md). Checks that the
  text feature and both splits exist.
  """
  data_dir = data_dir_of(config)
  remote = gcs_mirror.is_remote(data_dir)
  local_root = gcs_mirror.local_dir(data_dir) if remote else data_dir
  builder = make_builder(config, local_root)
  published = str(make_builder(config, data_dir).data_dir) if remote else str(builder.data_dir)
  if gcs_mirror.is_published(published):
    if remote:
      gcs_mirror.download(published, str(builder.data_dir))
    logging.info("dataset %s: reusing %s", config.dataset, published)
  elif not build_if_missing:
    raise ValueError(
        f"dataset {config.dataset!r} is not built in {published}; build it once "
        "before starting several processes: python -m pipeline.train_tokenizer "
        "--config=<the run's config file>")
  else:
    logging.info("dataset %s: building into %s", config.dataset, published)
    builder.download_and_prepare()
    if remote:
      gcs_mirror.upload(str(builder.data_dir), published)
  # Opened again so that info (splits, metadata) is read from the prepared files.
  builder = make_builder(config, local_root)
  _check(builder, config)
  return builder


def _check(builder: tfds.core.DatasetBuilder, config: DataConfig):
  features = list(builder.info.features.keys())
  if config.text_feature not in features:
    raise ValueError(f"data.text_feature={config.text_feature!r} is not a feature of "
                     f"dataset {config.dataset!r}; its features: {sorted(features)}.")
  splits = list(builder.info.splits.keys())
  for field in ("train_split", "eval_split"):
    split = getattr(config, field)
    if split not in splits:
      raise ValueError(f"data.{field}={split!r} is not a split of dataset "
                       f"{config.dataset!r}; its splits: {splits}.")


def data_source(config: DataConfig, split: str, build_if_missing: bool = True):
  """Random access to one split: `len`, `[i]` and batched `__getitems__`."""
  builder = prepare(config, build_if_missing)
  return builder.as_data_source(split)


def published_dir(config: DataConfig) -> str:
  """The prepared dataset's directory where data.data_dir says (maybe gs://)."""
  return str(make_builder(config).data_dir)
