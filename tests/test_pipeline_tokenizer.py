"""SentencePiece: any .model file, the vocabulary check, text kept exactly, and
the store that a multi-process run refuses to build."""

import pickle

import pytest

from pipeline import documents
from pipeline import streams
from pipeline.config import DataConfig
from pipeline.tokenizer import check_vocab, load_tokenizer, save_tokenizer, train_tokenizer

VOCAB = 512


@pytest.fixture(scope="module")
def tokenizer():
  paths, _ = documents.stdlib_files(20)
  return train_tokenizer((open(p).read() for p in paths), VOCAB)


def test_a_model_file_round_trips(tokenizer, tmp_path):
  path = str(tmp_path / "mine.model")
  save_tokenizer(tokenizer, path)
  loaded = load_tokenizer(path)
  assert loaded.path == path and loaded.model_proto == tokenizer.model_proto


def test_vocab_mismatch_names_both_sizes(tokenizer):
  with pytest.raises(ValueError, match="model.vocab_size=8192 does not match .* 512"):
    check_vocab(tokenizer, 8192)
  check_vocab(tokenizer, VOCAB)


def test_missing_or_broken_model_files_are_named(tmp_path):
  with pytest.raises(ValueError, match="nothing.model.*no such SentencePiece"):
    load_tokenizer(str(tmp_path / "nothing.model"))
  broken = tmp_path / "broken.model"
  broken.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="broken.model' is not a SentencePiece model"):
    load_tokenizer(str(broken))


def test_tokenizer_pickles_for_workers_and_keeps_text_exact(tokenizer):
  copy = pickle.loads(pickle.dumps(tokenizer))
  text = "class A:\n    def f(self):\n\t\treturn 'ß'  # two spaces\n"
  ids = copy.encode_batch([text])[0]
  assert ids == tokenizer.encode_batch([text])[0]
  assert copy.decode(ids) == text


def test_processes_that_must_not_build_name_the_command(tmp_path):
  config = DataConfig(data_dir=str(tmp_path), max_files=5)
  with pytest.raises(ValueError, match="does not exist .*python -m pipeline.prepare_store"):
    streams.ensure_stores(config, 1024, build_if_missing=False)
