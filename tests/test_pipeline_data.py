"""Documents from files (text, JSONL, the stdlib), the deterministic split, bad
input, config errors, and a registered TFDS dataset built into a token store."""

import logging
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline import documents
from pipeline import token_store
from pipeline.config import DataConfig
from pipeline.documents import ReadStats, split_of
from pipeline.store_build import build_store
from pipeline.tokenizer import save_tokenizer, train_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _corpus(directory, n_text=12, n_lines=30):
  """Plain-text files in two folders and a JSONL file; returns their texts."""
  texts = []
  for i in range(n_text):
    path = directory / ("a" if i % 2 else "b") / f"doc{i}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    texts.append(f"document {i}\n    " + " ".join(WORDS[i % 5:]) * (i + 1))
    path.write_text(texts[-1])
  lines = [f'{{"text": "line {i}: {" ".join(WORDS[: i % 12 + 1])}", "id": {i}}}'
           for i in range(n_lines)]
  (directory / "a" / "lines.jsonl").write_text("\n".join(lines) + "\n")
  return texts + [f"line {i}: " + " ".join(WORDS[: i % 12 + 1]) for i in range(n_lines)]


def _read(glob, fraction, stats=None):
  """{split: {key: text}} of the files matching `glob`."""
  paths, root = documents.find_files(glob), documents.glob_root(glob)
  return {split: dict(documents.read_documents(paths, root, split, "auto", "text", fraction,
                                               stats or ReadStats()))
          for split in ("train", "validation")}


def test_text_and_jsonl_files_give_both_splits(tmp_path):
  texts = _corpus(tmp_path / "corpus")
  built = _read(str(tmp_path / "corpus/**/*.*"), 0.3)
  assert built["train"] and built["validation"]
  assert not set(built["train"]) & set(built["validation"])
  assert sorted(t for s in built.values() for t in s.values()) == sorted(texts)
  assert "a/lines.jsonl:1" in {**built["train"], **built["validation"]}
  for split, docs in built.items():
    assert all(split_of(key, 0.3) == split for key in docs)


def test_split_follows_the_keys_not_the_location(tmp_path):
  _corpus(tmp_path / "one")
  shutil.copytree(tmp_path / "one", tmp_path / "two")
  assert _read(str(tmp_path / "one/**/*.*"), 0.3) == _read(str(tmp_path / "two/**/*.*"), 0.3)


def test_bad_input_is_skipped_or_repaired_counted_and_logged(tmp_path, caplog):
  corpus = tmp_path / "corpus"
  _corpus(corpus, n_text=6, n_lines=0)
  (corpus / "empty.txt").write_bytes(b"")
  (corpus / "blank.txt").write_bytes(b"  \n\t\n")
  (corpus / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
  (corpus / "a/lines.jsonl").write_bytes(b"\n".join([
      b'{"text": "a good line"}', b"", b"not json", b'{"other": "x"}',
      b'{"text": ""}', b'{"text": 5}', b'{"text": "bad \xff byte"}']))
  stats = ReadStats()
  with caplog.at_level(logging.INFO):  # empty documents at INFO, the rest WARNING
    built = _read(str(corpus / "**/*.*"), 0.4, stats)
  assert stats.empty_skipped == 3  # empty.txt, blank.txt, the empty line text
  assert stats.bad_lines_skipped == 3  # not JSON, no "text", a number
  assert stats.invalid_utf8_replaced == 2
  assert stats.documents == 6 + 1 + 2
  texts = {t for s in built.values() for t in s.values()}
  assert "caf\ufffd au lait" in texts and "bad \ufffd byte" in texts
  for where in ("latin1.txt", "empty.txt", "lines.jsonl:3"):
    assert where in caplog.text
  warned = "".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert "latin1.txt" in warned and "lines.jsonl:3" in warned and "empty.txt" not in warned


def test_a_glob_without_files_names_the_glob(tmp_path):
  with pytest.raises(ValueError, match="none/\\*.txt.*matches no files"):
    documents.find_files(str(tmp_path / "none/*.txt"))


def test_the_default_corpus_leaves_out_tests_and_site_packages():
  paths, root = documents.stdlib_files()
  assert len(paths) > 600
  assert not [p for p in paths if {"test", "tests", "site-packages"}
              & set(p[len(root):].split("/"))]


@pytest.mark.parametrize("overrides, match", [
    ({"dataset": "text_files"}, "needs data.files"),
    ({"files": "/x/*.txt"}, "only read when data.dataset='text_files'"),
    ({"file_format": "csv"}, "data.file_format='csv' is not one of"),
    ({"validation_fraction": 1.0}, "data.validation_fraction=1.0 must be"),
    ({"seq_len": 1}, "data.seq_len=1 must be >= 2"),
    ({"max_files": -1}, "data.max_files=-1 must be an integer >= 0"),
    ({"stores": "a=/x,a=/y"}, "entry 'a=/y' needs a unique name"),
    ({"stores": "a=/x", "mixture": "a:-1"}, "weight of 'a' is '-1'"),
    ({"stores": "a=/x,b=/y", "mixture": "a:1"}, r"gives no weight to \['b'\]"),
])
def test_config_errors_name_the_field(overrides, match):
  with pytest.raises(ValueError, match=match):
    DataConfig(**overrides)


class TinyRegisteredCorpus(tfds.core.GeneratorBasedBuilder):
  """A registered TFDS dataset with its text in a feature named "body"."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # a builder defined outside a package

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"body": tfds.features.Text(), "label": tfds.features.Scalar(np.int64)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(40), "validation": self._generate_examples(8)}

  def _generate_examples(self, n):
    for i in range(n):  # every 10th document is empty
      body = "" if i % 10 == 3 else " ".join(WORDS[i % 7:]) + f" number {i}"
      yield i, {"body": body, "label": i}


def test_a_registered_tfds_dataset_builds_a_store_by_name_and_feature(tmp_path):
  tokenizer = train_tokenizer([" ".join(WORDS) + f" number {i}" for i in range(200)], 300)
  save_tokenizer(tokenizer, str(tmp_path / "t.model"))
  config = DataConfig(dataset="tiny_registered_corpus", text_feature="body",
                      data_dir=str(tmp_path / "tfds"), tokenizer=str(tmp_path / "t.model"))
  manifest = build_store(config, str(tmp_path / "store"), 300)
  assert manifest["splits"]["train"]["documents"] == 36  # 40, 4 empty ones skipped
  assert manifest["counts"]["train"]["empty_skipped"] == 4
  split = token_store.open_split(str(tmp_path / "store"), manifest, "validation")
  first = split.read([(0, 0, int(split.lengths_N[0]))])[0]
  assert first[0] == tokenizer.bos_id and first[-1] == tokenizer.eos_id
  assert tokenizer.decode(first[1:-1]) == " ".join(WORDS) + " number 0"
  with pytest.raises(ValueError, match="'content' is not a feature.*'body', 'label'"):
    build_store(DataConfig(dataset="tiny_registered_corpus", text_feature="content",
                           data_dir=str(tmp_path / "tfds"), tokenizer=config.tokenizer),
                str(tmp_path / "other"), 300)
  with pytest.raises(ValueError, match="'no_such_corpus_xyz' is not a registered"):
    build_store(DataConfig(dataset="no_such_corpus_xyz", data_dir=str(tmp_path)),
                str(tmp_path / "x"), 300)
