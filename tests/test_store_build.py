"""The token store's Beam build (pipeline/store_build.py) on a 40-file stdlib
corpus: the same bytes with 1 or 2 worker processes and on gs://, exactly the
tokenized documents, a SIGKILLed build finished by a rerun, bad input refused."""

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import types

import pytest

from pipeline import documents
from pipeline import token_store
from pipeline.config import DataConfig
from pipeline.store_build import build_store
from pipeline.tokenizer import document_ids, load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES, FRACTION, VOCAB, SHARDS = 40, 0.2, 512, 4  # ~1 MB of stdlib
SPLITS = {"train": "train", "validation": "validation"}  # documents.split_of -> store
# Measured on Python 3.11 (the first 40 stdlib files): the documents each shard
# got. None is empty: the GCS emulator drops the connection on a zero-byte
# upload (gcp_storage_emulator's _media_upload takes len(None)), which real GCS
# accepts; tensorstore would retry for minutes. Empty shards are tested locally.
SHARD_DOCUMENTS = {"train": [11, 8, 8, 6], "validation": [2, 1, 1, 3]}


def _files(store: str) -> dict[str, bytes]:
  """Every object of a local or gs:// store directory, by name."""
  kv = token_store.kvstore(store)
  return {key.decode(): kv.read(key).result().value for key in kv.list().result()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The small store built with 2 worker processes, and elsewhere with 1."""
  data = DataConfig(max_files=FILES, validation_fraction=FRACTION)
  root = tmp_path_factory.mktemp("stores")
  build_store(data, str(root / "two"), VOCAB, workers=2, num_shards=SHARDS)
  two_workers = _files(str(root / "two"))
  store = str(root / "small")
  manifest = build_store(data, store, VOCAB, num_shards=SHARDS)
  return types.SimpleNamespace(data=data, store=store, manifest=manifest,
                               files=_files(store), two_workers=two_workers)


def test_two_worker_processes_write_the_same_bytes_as_one(built):
  names = {token_store.shard_name(s, i, SHARDS) + ext for s in SPLITS.values()
           for i in range(SHARDS) for ext in (".tokens", ".lengths")}
  assert set(built.files) == names | {token_store.MANIFEST, "tokenizer.model"}
  assert built.two_workers == built.files


def test_manifest_counts(built):
  m = built.manifest
  assert m["format"] == token_store.FORMAT_VERSION and m["dtype"] == "<u2"
  assert m["source"]["dataset"] == "stdlib" and m["source"]["max_files"] == FILES
  assert m["tokenizer"]["vocab_size"] == VOCAB and m["tokenizer"]["path"] == "tokenizer.model"
  assert token_store.tokenizer_path(built.store, m) == os.path.join(built.store, "tokenizer.model")
  assert m["tokenizer"]["sha256"] == hashlib.sha256(built.files["tokenizer.model"]).hexdigest()
  for split, shard_documents in SHARD_DOCUMENTS.items():
    info = m["splits"][split]
    assert [s["documents"] for s in info["shards"]] == shard_documents
    assert info["documents"] == sum(shard_documents)
    assert info["tokens"] == sum(s["tokens"] for s in info["shards"])
    assert m["counts"][split] == {"files": sum(shard_documents), "documents": sum(shard_documents),
                                  "empty_skipped": 0, "invalid_utf8_replaced": 0,
                                  "bad_lines_skipped": 0}


def _expected(data: DataConfig, tokenizer, split: str) -> list[list[int]]:
  """The split's documents, tokenized here, in the store's order: by shard (a
  hash of the key), then by key."""
  paths, root = documents.stdlib_files(data.max_files)
  docs = list(documents.read_documents(paths, root, split, "text", "text",
                                       data.validation_fraction, documents.ReadStats()))
  ids = tokenizer.encode_batch([text for _, text in docs])
  shard = lambda key: int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % SHARDS
  order = sorted(range(len(docs)), key=lambda i: (shard(docs[i][0]), docs[i][0]))
  return [document_ids(tokenizer, ids[i]).tolist() for i in order]


def _read_all(store: str, manifest: dict, split: str) -> list[list[int]]:
  rows = token_store.open_split(store, manifest, split)
  return [d.tolist() for d in rows.read([(i, 0, int(n)) for i, n in enumerate(rows.lengths_N)])]


def test_reading_back_gives_the_tokenized_documents(built):
  tokenizer = load_tokenizer(token_store.tokenizer_path(built.store, built.manifest))
  for split in SPLITS.values():
    got = _read_all(built.store, built.manifest, split)
    assert got == _expected(built.data, tokenizer, split)
    assert sum(map(len, got)) == built.manifest["splits"][split]["tokens"]


def test_an_existing_store_is_reused_and_must_match_the_source(built):
  shard = os.path.join(built.store, token_store.shard_name("train", 0, SHARDS) + ".tokens")
  written = os.stat(shard).st_mtime_ns
  assert build_store(built.data, built.store, VOCAB) == built.manifest
  assert os.stat(shard).st_mtime_ns == written  # not built again
  with pytest.raises(ValueError, match="was built from .*'max_files': 40.*'max_files': 39"):
    build_store(DataConfig(max_files=FILES - 1, validation_fraction=FRACTION),
                built.store, VOCAB)


def test_killed_build_on_gcs_is_finished_by_a_rerun(built, gcs_bucket, healthy_gcs, tmp_path,
                                                    caplog):
  """SIGKILL of the command once every shard is on gs:// (store.json's write is
  made to fail with 503, which the client retries), then the same build again."""
  store = f"{gcs_bucket}/killed"
  healthy_gcs.fail(503, "killed/store.json")
  log = tmp_path / "stderr"
  with open(log, "w") as stderr:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.prepare_store", "--config=configs/smoke.py",
         f"--config.data.max_files={FILES}", f"--config.data.validation_fraction={FRACTION}",
         f"--config.model.vocab_size={VOCAB}", f"--store={store}", f"--num_shards={SHARDS}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
  try:
    deadline = time.monotonic() + 60
    while len(token_store.kvstore(store).list().result()) < len(built.files) - 1:
      assert process.poll() is None, f"the build exited {process.returncode}:\n{log.read_text()}"
      assert time.monotonic() < deadline, f"no shards after 60 s:\n{log.read_text()}"
      time.sleep(0.2)
    assert process.poll() is None  # stuck writing store.json
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  healthy_gcs.fail(None)
  with pytest.raises(ValueError, match="half-written: 17 files but no store.json"):
    token_store.read_manifest(store)

  with caplog.at_level(logging.INFO, logger="absl"):
    manifest = build_store(built.data, store, VOCAB, num_shards=SHARDS)
  assert f"reusing {store}/tokenizer.model of the stopped build" in caplog.text
  assert "is half-written (17 files, no store.json): finishing it" in caplog.text
  files = _files(store)
  assert {k: v for k, v in files.items() if k != token_store.MANIFEST} == {
      k: v for k, v in built.files.items() if k != token_store.MANIFEST}
  assert token_store.tokenizer_path(store, manifest) == f"{store}/tokenizer.model"
  assert files[token_store.MANIFEST] == built.files[token_store.MANIFEST]  # a whole copy
  for split in SPLITS.values():
    assert _read_all(store, manifest, split) == _read_all(built.store, built.manifest, split)


def test_jsonl_bad_lines_are_counted_per_split(built, tmp_path):
  """What the workers skip or repair reaches store.json through Beam counters."""
  lines = [json.dumps({"text": f"def f{i}(x):\n  return x + {i}\n"}) for i in range(40)]
  lines[3:8] = ["{not json", json.dumps({"body": "no text"}), json.dumps({"text": "  "}),
                json.dumps(["a list"]), '{"text": "bad \xff utf-8"}']
  (tmp_path / "a.jsonl").write_bytes("\n".join(lines).encode("latin-1"))
  (tmp_path / "b.jsonl").write_text("\n".join(lines[20:]) + "\n\n")
  (tmp_path / "empty.jsonl").write_text("")
  data = DataConfig(dataset="text_files", files=str(tmp_path / "*.jsonl"),
                    validation_fraction=0.5,
                    tokenizer=token_store.tokenizer_path(built.store, built.manifest))
  store = str(tmp_path / "store")
  manifest = build_store(data, store, VOCAB, num_shards=16)  # ~2 documents a shard
  paths, files = documents.find_files(data.files), _files(store)
  for split, name in SPLITS.items():
    stats = documents.ReadStats()
    texts = [t for _, t in documents.read_documents(paths, str(tmp_path), split, "auto",
                                                    "text", 0.5, stats)]
    assert manifest["counts"][name] == vars(stats)
    assert len(_read_all(store, manifest, name)) == len(texts)
    assert manifest["splits"][name]["documents"] == len(texts)
    shards = manifest["splits"][name]["shards"]
    assert 0 in [s["documents"] for s in shards]  # and yet written:
    assert all(files[s["name"] + ".tokens"] == b"" for s in shards if not s["documents"])
    assert len(shards) == 16 and all(s["name"] + ".lengths" in files for s in shards)
  counts = manifest["counts"]
  assert sum(counts[s]["bad_lines_skipped"] for s in SPLITS) == 3
  assert sum(counts[s]["invalid_utf8_replaced"] for s in SPLITS) == 1
  assert sum(counts[s]["empty_skipped"] for s in SPLITS) == 2  # "  ", empty.jsonl


def test_bad_input(built, gcs_bucket, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  for i in range(5):
    (empty / f"{i}.txt").write_text(" \n" * i)
  with pytest.raises(ValueError, match=r"split 'train' has no documents .*'empty_skipped': \d"):
    build_store(DataConfig(dataset="text_files", files=str(empty / "*.txt")),
                str(tmp_path / "s1"), VOCAB)

  # One document, in train: the validation split is found empty after the pipeline.
  name = next(f"{i}.txt" for i in range(100) if documents.split_of(f"{i}.txt", 0.1) == "train")
  (tmp_path / "one").mkdir()
  (tmp_path / "one" / name).write_text("x = 1\n")
  tokenizer = token_store.tokenizer_path(built.store, built.manifest)
  with pytest.raises(ValueError, match="split 'validation' has no documents .*'documents': 0"):
    build_store(DataConfig(dataset="text_files", files=str(tmp_path / "one/*.txt"),
                           tokenizer=tokenizer), str(tmp_path / "s2"), VOCAB)
  assert not os.path.exists(tmp_path / "s2" / token_store.MANIFEST)

  with pytest.raises(ValueError, match="model.vocab_size=1024 does not match the "
                     "tokenizer's vocabulary of 512"):
    build_store(DataConfig(max_files=FILES, tokenizer=tokenizer), str(tmp_path / "s3"), 1024)
  with pytest.raises(ValueError, match="workers=0 must be >= 1"):
    build_store(built.data, str(tmp_path / "s4"), VOCAB, workers=0)
  with pytest.raises(ValueError, match="num_shards=-1 must be >= 0"):
    build_store(built.data, str(tmp_path / "s4"), VOCAB, num_shards=-1)
  with pytest.raises(ValueError, match=r"gs://.*/none/\*.txt' matches no files"):
    build_store(DataConfig(dataset="text_files", files=f"{gcs_bucket}/none/*.txt"),
                str(tmp_path / "s4"), VOCAB)


def test_a_corpus_on_gcs_builds_the_same_store_as_its_local_copy(built, gcs_bucket, tmp_path):
  """What a Dataflow job does: workers read the files from gs:// themselves."""
  from etils import epath
  lines = [json.dumps({"text": f"def g{i}(y):\n  return y * {i}\n"}) for i in range(30)]
  corpus = {"a.jsonl": "\n".join(lines[:20]), "sub/b.jsonl": "\n".join(lines[20:]),
            "c.txt": "print('one text document')\n"}
  for name, text in corpus.items():
    for root in (epath.Path(f"{gcs_bucket}/corpus"), epath.Path(tmp_path / "corpus")):
      (root / name).parent.mkdir(parents=True, exist_ok=True)
      (root / name).write_text(text)
  tokenizer = token_store.tokenizer_path(built.store, built.manifest)
  stores = {}
  for where, files in (("gcs", f"{gcs_bucket}/corpus/**/*.*"),
                       ("local", str(tmp_path / "corpus/**/*.*"))):
    data = DataConfig(dataset="text_files", files=files, validation_fraction=0.3,
                      tokenizer=tokenizer)
    stores[where] = f"{gcs_bucket}/built_{where}" if where == "gcs" else str(tmp_path / where)
    build_store(data, stores[where], VOCAB, num_shards=2)
  remote, local = _files(stores["gcs"]), _files(stores["local"])
  assert remote.keys() == local.keys()
  assert {k: v for k, v in remote.items() if k != token_store.MANIFEST} == {
      k: v for k, v in local.items() if k != token_store.MANIFEST}
  assert json.loads(remote[token_store.MANIFEST])["splits"]["train"]["documents"] > 15
