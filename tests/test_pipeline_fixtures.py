"""Corpora and tokenizers shared by the pipeline tests, each built once per session.

Pytest fixtures defined in one test module are not visible in another, and
conftest.py belongs to the whole suite, so the test modules call these cached
builders from their own fixtures.
"""

import dataclasses
import json

import numpy as np

from pipeline import prepare as prepare_lib
from pipeline import sources
from pipeline.config import DataConfig
from pipeline.tokenizer import document_ids

_BUILT = {}
SMALL_FILES = 40  # of the stdlib: about 1 MB, both splits non-empty
SMALL_VOCAB = 512


def small_stdlib(tmp_path_factory, **overrides):
  """(config, tokenizer) of a 40-file stdlib subset with a 512-piece BPE."""
  if "small" not in _BUILT:
    data_dir = tmp_path_factory.mktemp("small_stdlib")
    config = DataConfig(data_dir=str(data_dir), max_files=SMALL_FILES, seq_len=64,
                        global_batch_size=8)
    _BUILT["small"] = config, prepare_lib.prepare(config, SMALL_VOCAB)
  config, tokenizer = _BUILT["small"]
  return dataclasses.replace(config, **overrides), tokenizer


def all_documents(config: DataConfig, tokenizer, split: str) -> list[np.ndarray]:
  """Every document of a split as the pipeline packs it (BOS + ids + EOS)."""
  texts = list(prepare_lib.corpus_texts(config, split))
  return [document_ids(tokenizer, ids) for ids in tokenizer.encode_batch(texts)]


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


def metadata(config: DataConfig) -> dict:
  """What the build stored about skipped or repaired input, per split."""
  return dict(sources.prepare(config, build_if_missing=False).info.metadata)


def test_small_stdlib_has_both_splits(tmp_path_factory):
  config, tokenizer = small_stdlib(tmp_path_factory)
  counts = metadata(config)
  assert counts["train"]["documents"] > 20 and counts["validation"]["documents"] > 0
  assert tokenizer.vocab_size == SMALL_VOCAB

