"""SentencePiece: the default tokenizer beside the data, any other .model, the
vocabulary check, and what a multi-process run refuses to build."""

import dataclasses
import pickle

import pytest

from pipeline import prepare as prepare_lib
from pipeline.config import DataConfig
from pipeline.tokenizer import check_vocab, load_tokenizer
from tests.test_pipeline_fixtures import SMALL_VOCAB, small_stdlib


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  return small_stdlib(tmp_path_factory)


def test_default_tokenizer_lies_beside_the_data_and_is_reused(small):
  config, tokenizer = small
  path = prepare_lib.default_tokenizer_path(config, SMALL_VOCAB)
  assert tokenizer.path == path and path.startswith(config.data_dir)
  again = prepare_lib.prepare(config, SMALL_VOCAB, build_if_missing=False)
  assert again.model_proto == tokenizer.model_proto
  assert prepare_lib.train_command(config, SMALL_VOCAB) == path  # exists: kept


def test_an_explicit_model_file_is_used_instead(small, tmp_path):
  config, tokenizer = small
  other = tmp_path / "mine.model"
  other.write_bytes(tokenizer.model_proto)
  loaded = prepare_lib.prepare(dataclasses.replace(config, tokenizer=str(other)),
                               SMALL_VOCAB)
  assert loaded.path == str(other) and loaded.vocab_size == SMALL_VOCAB


def test_vocab_mismatch_names_both_sizes(small):
  _, tokenizer = small
  with pytest.raises(ValueError, match="model.vocab_size=8192 does not match .* 512"):
    check_vocab(tokenizer, 8192)
  check_vocab(tokenizer, SMALL_VOCAB)


def test_missing_or_broken_model_files_are_named(tmp_path):
  with pytest.raises(ValueError, match="nothing.model.*no such SentencePiece"):
    load_tokenizer(str(tmp_path / "nothing.model"))
  broken = tmp_path / "broken.model"
  broken.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="broken.model' is not a SentencePiece model"):
    load_tokenizer(str(broken))


def test_tokenizer_pickles_for_workers_and_keeps_text_exact(small):
  _, tokenizer = small
  copy = pickle.loads(pickle.dumps(tokenizer))
  text = "class A:\n    def f(self):\n\t\treturn 'ß'  # two spaces\n"
  ids = copy.encode_batch([text])[0]
  assert ids == tokenizer.encode_batch([text])[0]
  assert copy.decode(ids) == text


def test_several_processes_refuse_to_build(small, tmp_path):
  config, _ = small
  with pytest.raises(ValueError, match="spm_bpe1024.model; train it once"):
    prepare_lib.prepare(config, 1024, build_if_missing=False)
  fresh = DataConfig(data_dir=str(tmp_path), max_files=5)
  with pytest.raises(ValueError, match="not built in .*python -m pipeline.train_tokenizer"):
    prepare_lib.prepare(fresh, 1024, build_if_missing=False)
