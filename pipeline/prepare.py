"""What a run does before its first batch: the dataset and the tokenizer.

`prepare(config, vocab_size)` builds the dataset if needed, loads
data.tokenizer, or the default tokenizer trained beside the data (training it
the first time), and checks it against the model's vocabulary.
"""

import os

from absl import logging
from etils import epath

from pipeline import sources
from pipeline import tokenizer as tokenizer_lib
from pipeline.config import DataConfig


def default_tokenizer_path(config: DataConfig, vocab_size: int) -> str:
  """`<prepared dataset dir>/spm_bpe<vocab_size>.model`, local or gs://."""
  return os.path.join(sources.published_dir(config), f"spm_bpe{vocab_size}.model")


def corpus_texts(config: DataConfig, split: str, build_if_missing: bool = True):
  """The texts of a split in stored order (TFDS already shuffled it by key)."""
  source = sources.data_source(config, split, build_if_missing)
  step = 256  # batched reads: single ArrayRecord reads are slow on big files
  for start in range(0, len(source), step):
    for record in source.__getitems__(range(start, min(start + step, len(source)))):
      text = record[config.text_feature]
      yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def train_default_tokenizer(config: DataConfig, vocab_size: int,
                            build_if_missing: bool = True) -> tokenizer_lib.Tokenizer:
  """Trains a BPE tokenizer on the train split and saves it beside the data."""
  path = default_tokenizer_path(config, vocab_size)
  logging.info("training a %d-piece BPE tokenizer on %s/%s", vocab_size,
               config.dataset, config.train_split)
  tokenizer = tokenizer_lib.train_tokenizer(
      corpus_texts(config, config.train_split, build_if_missing), vocab_size)
  tokenizer_lib.save_tokenizer(tokenizer, path)
  logging.info("saved %s", tokenizer)
  return tokenizer


def prepare(config: DataConfig, vocab_size: int,
            build_if_missing: bool = True) -> tokenizer_lib.Tokenizer:
  """The dataset built and the tokenizer loaded and checked; returns the tokenizer.

  With `build_if_missing=False` a missing dataset or default tokenizer raises a
  ValueError naming the command that makes it: pass False in every process of
  a multi-process run except one (or in all of them, after that command).
  """
  sources.prepare(config, build_if_missing)
  if config.tokenizer:
    tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer)
  else:
    path = default_tokenizer_path(config, vocab_size)
    if epath.Path(path).exists():
      tokenizer = tokenizer_lib.load_tokenizer(path)
    elif build_if_missing:
      tokenizer = train_default_tokenizer(config, vocab_size)
    else:
      raise ValueError(f"no tokenizer at {path}; train it once before starting "
                       "several processes: python -m pipeline.train_tokenizer "
                       "--config=<the run's config file>")
  tokenizer_lib.check_vocab(tokenizer, vocab_size)
  return tokenizer


def train_command(config: DataConfig, vocab_size: int, force: bool = False) -> str:
  """`python -m pipeline.train_tokenizer`: builds the dataset if needed, trains
  the default tokenizer unless it exists (or `force`); returns its path."""
  sources.prepare(config)
  path = default_tokenizer_path(config, vocab_size)
  if epath.Path(path).exists() and not force:
    logging.info("%s exists; pass --force to train it again", path)
  else:
    train_default_tokenizer(config, vocab_size)
  return path
