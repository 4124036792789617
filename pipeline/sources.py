"""Registered TFDS datasets as random-access sources for the token-store build.

`data.dataset` names any dataset in the TFDS registry; TFDS downloads and
prepares it as ArrayRecord in a local `data.data_dir` (ArrayRecord's reader
opens local files only), and `pipeline/store_build.py` reads it by index
ranges into a token store, which may live on gs://.
"""

import os
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging

from common.log_filters import DropLines
from pipeline.config import DataConfig

DEFAULT_DATA_DIR = "~/.cache/griffin/tfds"


# TFDS warns on each builder made from a config its class does not list.
logging.get_absl_logger().addFilter(DropLines("Using custom data configuration"))


def data_dir_of(config: DataConfig) -> str:
  """The TFDS data_dir: data.data_dir, or the default local cache."""
  return os.path.expanduser(config.data_dir or DEFAULT_DATA_DIR)


def prepare(config: DataConfig, build_if_missing: bool = True) -> tfds.core.DatasetBuilder:
  """The prepared builder of `config.dataset` (built once, then reused).

  Checks that the text feature and both splits exist.
  """
  data_dir = data_dir_of(config)
  if data_dir.startswith("gs://"):
    raise ValueError(f"data.data_dir={config.data_dir!r}: TFDS datasets are read from a "
                     "local directory (ArrayRecord opens local files only); the token "
                     "store built from it may be on gs:// (--store).")
  try:
    builder = tfds.builder(config.dataset, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as error:
    raise ValueError(
        f"data.dataset={config.dataset!r} is not a registered TFDS dataset (nor one of "
        "stdlib, text_files, stdlib_bytes or the synthetic tasks); check the spelling, "
        "or import the module that defines it.") from error
  if not builder.is_prepared():
    if not build_if_missing:
      raise ValueError(f"TFDS dataset {config.dataset!r} is not prepared in {data_dir}.")
    logging.info("dataset %s: preparing in %s", config.dataset, data_dir)
    builder.download_and_prepare()
    builder = tfds.builder(config.dataset, data_dir=data_dir, file_format="array_record")
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
  return prepare(config, build_if_missing).as_data_source(split)


def texts(config: DataConfig, split: str, stats, start: int = 0,
          stop: int | None = None) -> Iterator[tuple[int, str]]:
  """(index, text) of the non-empty records [start, stop) of a split, in stored
  order (batched reads: single ArrayRecord reads are slow on big files); the
  empty ones are counted in `stats` (a documents.ReadStats)."""
  from pipeline import documents
  source = data_source(config, split, build_if_missing=False)
  stop = len(source) if stop is None else stop
  step = 256
  for first in range(start, stop, step):
    indices = range(first, min(first + step, stop))
    for index, record in zip(indices, source.__getitems__(indices)):
      text, where = record[config.text_feature], f"{config.dataset}/{split}[{index}]"
      text = documents.decode(text, where, stats) if isinstance(text, bytes) else str(text)
      if text.strip():
        stats.documents += 1
        yield index, text
      else:
        stats.note("empty_skipped", where, "empty document skipped")
