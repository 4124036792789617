"""TFDS builders (text files, JSONL, the stdlib corpus, registered datasets),
the deterministic split, and bad input."""

import dataclasses
import logging
import shutil
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline import grain_pipeline
from pipeline import packing
from pipeline import prepare as prepare_lib
from pipeline import sources
from pipeline import text_dataset
from pipeline.config import DataConfig
from pipeline.documents import split_of
from pipeline.tokenizer import train_tokenizer
from tests.test_pipeline_fixtures import metadata, small_stdlib, write_jsonl

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _corpus(directory, n_text=12, n_lines=30):
  """Plain-text files in two folders and a JSONL file; returns their texts."""
  texts = []
  for i in range(n_text):
    path = directory / ("a" if i % 2 else "b") / f"doc{i}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    texts.append(f"document {i}\n    " + " ".join(WORDS[i % 5:]) * (i + 1))
    path.write_text(texts[-1])
  lines = [{"text": f"line {i}: " + " ".join(WORDS[: i % 12 + 1]), "id": i}
           for i in range(n_lines)]
  write_jsonl(directory / "a" / "lines.jsonl", lines)
  return texts + [r["text"] for r in lines]


def _texts_and_keys(config):
  builder = sources.prepare(config)
  return {split: {r["key"].decode(): r["text"].decode()
                  for r in builder.as_data_source(split)}
          for split in ("train", "validation")}


def test_text_and_jsonl_files_build_both_splits(tmp_path):
  texts = _corpus(tmp_path / "corpus")
  config = DataConfig(dataset="text_files", files=str(tmp_path / "corpus/**/*.*"),
                      data_dir=str(tmp_path / "tfds"), validation_fraction=0.3)
  built = _texts_and_keys(config)
  assert built["train"] and built["validation"]
  assert not set(built["train"]) & set(built["validation"])
  assert sorted(t for s in built.values() for t in s.values()) == sorted(texts)
  assert "a/lines.jsonl:1" in {**built["train"], **built["validation"]}
  for split, docs in built.items():
    assert all(split_of(key, 0.3) == split for key in docs)


def test_split_follows_the_keys_not_the_location(tmp_path):
  _corpus(tmp_path / "one")
  shutil.copytree(tmp_path / "one", tmp_path / "two")
  splits = [_texts_and_keys(DataConfig(
      dataset="text_files", files=str(tmp_path / name / "**/*.*"),
      data_dir=str(tmp_path / "tfds"), validation_fraction=0.3))
            for name in ("one", "two")]
  assert splits[0] == splits[1]


def test_bad_input_is_skipped_or_repaired_counted_and_logged(tmp_path, caplog):
  corpus = tmp_path / "corpus"
  _corpus(corpus, n_text=6, n_lines=0)
  (corpus / "empty.txt").write_bytes(b"")
  (corpus / "blank.txt").write_bytes(b"  \n\t\n")
  (corpus / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
  (corpus / "a/lines.jsonl").write_bytes(b"\n".join([
      b'{"text": "a good line"}', b"", b"not json", b'{"other": "x"}',
      b'{"text": ""}', b'{"text": 5}', b'{"text": "bad \xff byte"}']))
  config = DataConfig(dataset="text_files", files=str(corpus / "**/*.*"),
                      data_dir=str(tmp_path / "tfds"), validation_fraction=0.4)
  with caplog.at_level(logging.WARNING):
    built = _texts_and_keys(config)
  counts = metadata(config)
  total = {name: sum(counts[s][name] for s in ("train", "validation"))
           for name in counts["train"]}
  assert total["empty_skipped"] == 3  # empty.txt, blank.txt, the empty line text
  assert total["bad_lines_skipped"] == 3  # not JSON, no "text", a number
  assert total["invalid_utf8_replaced"] == 2
  assert total["documents"] == 6 + 1 + 2
  texts = {t for s in built.values() for t in s.values()}
  assert "caf\ufffd au lait" in texts and "bad \ufffd byte" in texts
  for where in ("latin1.txt", "empty.txt", "lines.jsonl:3"):
    assert where in caplog.text


def test_a_glob_without_files_names_the_glob(tmp_path):
  config = DataConfig(dataset="text_files", files=str(tmp_path / "none/*.txt"),
                      data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="none/\\*.txt.*matches no files"):
    sources.prepare(config)


def test_a_split_without_documents_is_an_error(tmp_path):
  (tmp_path / "only.txt").write_text("one document")  # lands in train
  config = DataConfig(dataset="text_files", files=str(tmp_path / "*.txt"),
                      data_dir=str(tmp_path / "tfds"), validation_fraction=0.01)
  with pytest.raises(ValueError, match="validation split of text_files .* no documents"):
    sources.prepare(config)


def test_unknown_dataset_feature_or_split_is_named(tmp_path_factory):
  config, _ = small_stdlib(tmp_path_factory)
  with pytest.raises(ValueError, match="'no_such_corpus_xyz' is not a registered"):
    sources.prepare(dataclasses.replace(config, dataset="no_such_corpus_xyz"))
  with pytest.raises(ValueError, match="'content' is not a feature.*'key', 'text'"):
    sources.prepare(dataclasses.replace(config, text_feature="content"))
  with pytest.raises(ValueError, match="'test' is not a split.*'train', 'validation'"):
    sources.prepare(dataclasses.replace(config, eval_split="test"))


@pytest.mark.parametrize("overrides, match", [
    ({"dataset": "text_files"}, "needs data.files"),
    ({"files": "/x/*.txt"}, "only read when data.dataset='text_files'"),
    ({"file_format": "csv"}, "data.file_format='csv' is not one of"),
    ({"validation_fraction": 1.0}, "data.validation_fraction=1.0 must be"),
    ({"seq_len": 1}, "data.seq_len=1 must be >= 2"),
    ({"max_files": -1}, "data.max_files=-1 must be an integer >= 0"),
])
def test_config_errors_name_the_field(overrides, match):
  with pytest.raises(ValueError, match=match):
    DataConfig(**overrides)


class TinyRegisteredCorpus(tfds.core.GeneratorBasedBuilder):
  """A registered TFDS dataset with its text in a feature named "body"."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # see pipeline/text_dataset.py

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"body": tfds.features.Text(), "label": tfds.features.Scalar(np.int64)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(40), "validation": self._generate_examples(8)}

  def _generate_examples(self, n):
    for i in range(n):  # every 10th document is empty
      body = "" if i % 10 == 3 else " ".join(WORDS[i % 7:]) + f" number {i}"
      yield i, {"body": body, "label": i}


def test_a_registered_tfds_dataset_is_read_by_name_and_feature(tmp_path, caplog):
  config = DataConfig(dataset="tiny_registered_corpus", text_feature="body",
                      data_dir=str(tmp_path), seq_len=16, global_batch_size=2)
  texts = list(prepare_lib.corpus_texts(config, "train"))
  tokenizer = train_tokenizer(texts * 5, vocab_size=300)
  with caplog.at_level(logging.INFO):
    rows = list(grain_pipeline.packed_rows(config, tokenizer, "train", shuffle=True,
                                           process_index=0, process_count=1,
                                           num_epochs=1))
  bos_count = sum(int((r["tokens"][r["segment_pos"] == 0] == tokenizer.bos_id).sum())
                  for r in rows)
  assert bos_count == 36  # 40 documents, 4 empty ones skipped
  assert "'empty_skipped'" in caplog.text  # the skips are logged ...
  reader = packing.ReadAndTokenize(sources.data_source(config, "train"), "body",
                                   tokenizer)
  assert len(reader(np.arange(40))) == 36
  assert reader.counts.values["empty_skipped"] == 4  # ... and counted


def test_default_corpus_builds_once_without_tests_and_trains_8k_bpe(tmp_path):
  config = DataConfig(data_dir=str(tmp_path))  # the whole stdlib
  builder = sources.prepare(config)
  train, valid = (builder.info.splits[s].num_examples for s in ("train", "validation"))
  assert train > 400 and 0.05 < valid / (train + valid) < 0.15
  keys = [r["key"].decode() for r in builder.as_data_source("validation")]
  assert not [k for k in keys if {"test", "tests", "site-packages"} & set(k.split("/"))]
  with mock.patch.object(text_dataset.Stdlib, "_split_generators",
                         side_effect=AssertionError("rebuilt")):
    tokenizer = prepare_lib.prepare(config, 8192)  # reuses the dataset
  assert tokenizer.vocab_size == 8192
  code = "def f(x):\n\tif x:\n        return 'é漢\\x00'\n"
  assert tokenizer.decode(tokenizer.encode_batch([code])[0]) == code
