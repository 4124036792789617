"""A corpus -> a token store (format: pipeline/token_store.py), as a Beam pipeline.

  Create(work units) -> read and tokenize each -> key by (split, shard)
    -> GroupByKey -> write each shard, its documents sorted by key

A unit is one file (stdlib, text_files) or an index range of a TFDS split. A
document's shard is a hash of its key and a shard is sorted by key, so the
store is the same bytes on any runner, with any worker count or bundle order.
The driver trains the tokenizer before the pipeline (or loads data.tokenizer)
and writes store.json after it: a killed build leaves no store.json, and its
rerun writes the same shards again and finishes it.

Runners: the DirectRunner's engine (this process, or N processes) by default;
`beam_args` may name another (Dataflow). Its workers read what they are
given: files local to them or on gs:// (documents.find_files); the stdlib and
TFDS datasets are the driver's own paths, so the DirectRunner's only. Memory:
the DirectRunner's shuffle holds every token of the corpus (2 bytes each);
any runner holds one shard while writing it.
"""

import dataclasses
import hashlib
import itertools
import logging as std_logging
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from common.log_filters import DropLines

# Beam's BigQuery client warns on import when its GCP extra (apitools) is
# missing; nothing here uses BigQuery, and Dataflow installs the extra.
_NO_APITOOLS_WARNING = DropLines("apitools not found")
std_logging.getLogger().addFilter(_NO_APITOOLS_WARNING)
try:
  import apache_beam as beam
  from apache_beam.metrics.metric import MetricsFilter
  from apache_beam.options.pipeline_options import PipelineOptions
finally:
  std_logging.getLogger().removeFilter(_NO_APITOOLS_WARNING)

from pipeline import documents
from pipeline import token_store
from pipeline import tokenizer as tokenizer_lib
from pipeline.config import DataConfig

TOKENIZER = "tokenizer.model"  # in the store, when trained for it (data.tokenizer="")
BYTES_PER_SHARD = 256 << 20  # of input text, for the default shard count
DOCUMENTS_PER_SHARD = 100_000  # the same for TFDS (sizes unknown): ~2.5 KB each
_TFDS_RANGE = 4096  # records per TFDS work unit
_ENCODE_BATCH = 256  # documents per SentencePiece call
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # it starts the shards' file names


def build_store(data: DataConfig, store_dir: str, vocab_size: int, *, workers: int = 1,
                num_shards: int = 0, beam_args: Sequence[str] = ()) -> dict:
  """Builds the token store of `data` in `store_dir` (local or gs://) and returns
  its manifest; a finished store is reused, a half-written one finished."""
  if workers < 1:
    raise ValueError(f"workers={workers} must be >= 1 (DirectRunner processes).")
  if num_shards < 0:
    raise ValueError(f"num_shards={num_shards} must be >= 0 (0: one per ~256 MB).")
  if bad := [s for s in (data.train_split, data.eval_split) if not _SPLIT_NAME.fullmatch(s)]:
    raise ValueError(f"split(s) {bad} cannot name shard files: give whole splits "
                     "named with [A-Za-z0-9_.-] only.")
  if "://" not in store_dir:
    store_dir = os.path.abspath(os.path.expanduser(store_dir))
  source = {k: getattr(data, k) for k in ("dataset", "files", "file_format", "jsonl_field",
                                          "validation_fraction", "max_files", "text_feature")}
  store = token_store.kvstore(store_dir)
  if store.read(token_store.MANIFEST).result().state != "missing":
    return _reuse(data, store_dir, source, vocab_size)
  if found := store.list().result():
    logging.warning("store %s is half-written (%d files, no %s): finishing it",
                    store_dir, len(found), token_store.MANIFEST)
  reader, units, default_shards = _plan(data)
  tokenizer = _tokenizer(data, store_dir, vocab_size, reader, units, source)
  num_shards = num_shards or max(1, default_shards)
  logging.info("store %s: %d work units, %d shards a split, %s", store_dir, len(units),
               num_shards, tokenizer)
  counts = _run(units, reader, tokenizer, store_dir, num_shards, workers, beam_args)
  splits = {split: _split_info(store, split, num_shards) for split in reader.splits}
  for split, info in splits.items():
    if info["documents"] != counts[split]["documents"]:
      raise RuntimeError(f"store {store_dir}: split {split!r} holds {info['documents']} "
                         f"documents, but {counts[split]['documents']} were read.")
    if not info["documents"]:
      raise _empty_split(split, source, counts[split])
  token_store.write_manifest(store_dir, {
      "source": source, "dtype": token_store.token_dtype(vocab_size).str,
      # Relative when the store holds its tokenizer, so a copied store is whole.
      "tokenizer": {"path": TOKENIZER if not data.tokenizer else tokenizer.path,
                    "vocab_size": tokenizer.vocab_size,
                    "sha256": token_store.tokenizer_fingerprint(tokenizer.model_proto),
                    "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id},
      "splits": splits, "counts": counts})
  return token_store.read_manifest(store_dir)


def _plan(data: DataConfig) -> tuple:
  """The source's reader, its work units, and the default shard count."""
  if data.dataset not in ("stdlib", "text_files"):
    from pipeline import sources  # TensorFlow Datasets: slow to import, only here
    reader = _TfdsReader(data)
    sizes = {n: len(sources.data_source(data, n)) for n in reader.splits}
    units = [(n, a, min(a + _TFDS_RANGE, sizes[n])) for n in reader.splits
             for a in range(0, sizes[n], _TFDS_RANGE)]
    return reader, units, -(-sum(sizes.values()) // DOCUMENTS_PER_SHARD)
  if data.train_split == data.eval_split:
    raise ValueError(f"data.train_split and data.eval_split are both {data.eval_split!r}; "
                     f"dataset {data.dataset!r} has two disjoint splits to name.")
  if data.dataset == "stdlib":
    (paths, root), read_as = documents.stdlib_files(data.max_files), ("text", "text")
  else:
    paths, root = documents.find_files(data.files, data.max_files), documents.glob_root(data.files)
    read_as = data.file_format, data.jsonl_field
  reader = _FileReader(root, *read_as, data.validation_fraction,
                       {"train": data.train_split, "validation": data.eval_split})
  return reader, paths, -(-sum(map(documents.file_size, paths)) // BYTES_PER_SHARD)


def _reuse(data: DataConfig, store_dir: str, source: dict, vocab_size: int) -> dict:
  """The finished store's manifest, if it was made from this source and tokenizer."""
  manifest = token_store.read_manifest(store_dir)
  if manifest["source"] != source:
    raise ValueError(f"store {store_dir} was built from {manifest['source']}, not "
                     f"{source}; give another store directory, or delete this one.")
  fingerprint = ""  # when data.tokenizer="", the one trained for the store is right
  if data.tokenizer:
    fingerprint = token_store.tokenizer_fingerprint(
        tokenizer_lib.load_tokenizer(data.tokenizer).model_proto)
  token_store.check_tokenizer(store_dir, manifest, fingerprint, vocab_size)
  logging.info("store %s exists: reusing it", store_dir)
  return manifest


def _tokenizer(data, store_dir, vocab_size, reader, units, source) -> tokenizer_lib.Tokenizer:
  """data.tokenizer, or a BPE trained on the train split and saved in the store
  first (a rerun of a killed build finds it there and does not train again)."""
  if data.tokenizer:
    tokenizer = tokenizer_lib.load_tokenizer(data.tokenizer)
    tokenizer_lib.check_vocab(tokenizer, vocab_size)
    return tokenizer
  path, store = f"{store_dir.rstrip('/')}/{TOKENIZER}", token_store.kvstore(store_dir)
  if (found := store.read(TOKENIZER).result()).state != "missing":
    tokenizer = tokenizer_lib.Tokenizer(found.value, path)
    if tokenizer.vocab_size == vocab_size:  # else: the stopped build had another
      logging.info("reusing %s of the stopped build", path)
      return tokenizer
  stats = documents.ReadStats()
  texts = reader.train_texts(units, stats)
  if (first := next(texts, None)) is None:
    raise _empty_split(data.train_split, source, dataclasses.asdict(stats))
  logging.info("training a %d-piece BPE tokenizer on %s", vocab_size, data.train_split)
  tokenizer = tokenizer_lib.train_tokenizer(itertools.chain([first], texts), vocab_size)
  store.write(TOKENIZER, tokenizer.model_proto).result()
  tokenizer.path = path
  return tokenizer


def _empty_split(split: str, source: dict, counts: dict) -> ValueError:
  return ValueError(f"split {split!r} has no documents (source {source}; read {counts}); "
                    "add documents, or change data.validation_fraction so both splits get some.")


class _FileReader:
  """A unit is a file; documents.split_of sends each document to a split."""

  def __init__(self, root, file_format, jsonl_field, fraction, names: dict[str, str]):
    self.root, self.format, self.field, self.fraction = root, file_format, jsonl_field, fraction
    self.names, self.splits = names, list(names.values())  # split_of's name -> the store's

  def documents(self, path: str, stats: dict) -> Iterator[tuple[str, str, str]]:
    for split, name in self.names.items():
      for key, text in documents.read_documents([path], self.root, split, self.format,
                                                self.field, self.fraction, stats[name]):
        yield name, key, text

  def train_texts(self, paths: list[str], stats) -> Iterator[str]:
    for _, text in documents.read_documents(paths, self.root, "train", self.format,
                                            self.field, self.fraction, stats):
      yield text


class _TfdsReader:
  """A unit is (split, start, stop) of a registered TFDS dataset; a document's
  key is its index, zero-padded so that keys sort like indices."""

  def __init__(self, data: DataConfig):
    self.data = data
    self.splits = list(dict.fromkeys([data.train_split, data.eval_split]))

  def documents(self, unit, stats: dict) -> Iterator[tuple[str, str, str]]:
    from pipeline import sources
    split, start, stop = unit
    for index, text in sources.texts(self.data, split, stats[split], start, stop):
      yield split, f"{index:012d}", text

  def train_texts(self, units, stats) -> Iterator[str]:
    del units  # the whole split, as stored
    from pipeline import sources
    return (text for _, text in sources.texts(self.data, self.data.train_split, stats))


class _ReadAndTokenize(beam.DoFn):
  """A unit -> ((split, shard), (key, token bytes)) for each of its documents;
  what it skipped or repaired adds to counters `read/<split>`:<ReadStats field>."""

  def __init__(self, reader, tokenizer: tokenizer_lib.Tokenizer, num_shards: int):
    self.reader, self.tokenizer, self.num_shards = reader, tokenizer, num_shards
    self.dtype = token_store.token_dtype(tokenizer.vocab_size)

  def process(self, unit):
    stats = {split: documents.ReadStats() for split in self.reader.splits}
    docs = self.reader.documents(unit, stats)
    while batch := list(itertools.islice(docs, _ENCODE_BATCH)):
      for (split, key, _), ids in zip(batch, self.tokenizer.encode_batch([t for *_, t in batch])):
        tokens = tokenizer_lib.document_ids(self.tokenizer, ids).astype(self.dtype)
        yield (split, shard_of(key, self.num_shards)), (key, tokens.tobytes())
    for split, counts in stats.items():
      for field, value in dataclasses.asdict(counts).items():
        beam.metrics.Metrics.counter(f"read/{split}", field).inc(value)


def shard_of(key: str, num_shards: int) -> int:
  """A document's shard: a hash of its key, the same on every worker."""
  return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % num_shards


def _write(keyed, store_dir: str, num_shards: int, vocab_size: int):
  (split, shard), values = keyed
  docs = sorted(v for v in values if v is not None)  # None: the shard's placeholder
  dtype = token_store.token_dtype(vocab_size)
  token_store.write_shard(store_dir, split, shard, num_shards,
                          [np.frombuffer(t, dtype) for _, t in docs], vocab_size)


def _run(units, reader, tokenizer, store_dir, num_shards, workers, beam_args) -> dict:
  """Runs the pipeline; returns each split's ReadStats counts, from its counters."""
  # The DirectRunner's own engine: Beam 2.77's DirectRunner first tries Prism, a
  # Go binary it downloads from GitHub, which ignores these two options.
  mode = (["--direct_running_mode=in_memory"] if workers == 1 else
          ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"])
  pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner", *mode, *beam_args]))
  tokens = (pipeline | "Units" >> beam.Create(units)
            | "ReadAndTokenize" >> beam.ParDo(_ReadAndTokenize(reader, tokenizer, num_shards)))
  # A placeholder in every shard, so that a shard no document hashed to is written too.
  every = pipeline | "EveryShard" >> beam.Create(
      [((split, i), None) for split in reader.splits for i in range(num_shards)])
  _ = ((tokens, every) | beam.Flatten() | beam.GroupByKey()
       | "Write" >> beam.Map(_write, store_dir, num_shards, tokenizer.vocab_size))
  result = pipeline.run()
  if (state := result.wait_until_finish()) != "DONE":
    raise RuntimeError(f"the Beam pipeline building {store_dir} ended {state}.")
  counts = {split: dataclasses.asdict(documents.ReadStats()) for split in reader.splits}
  for counter in result.metrics().query(MetricsFilter())["counters"]:
    split, name = counter.key.metric.namespace.removeprefix("read/"), counter.key.metric.name
    if name in counts.get(split, {}):
      counts[split][name] += counter.committed
  return counts


def _split_info(store, split: str, num_shards: int) -> dict:
  """A split's documents and tokens, by shard, from the lengths files written."""
  names = [token_store.shard_name(split, i, num_shards) for i in range(num_shards)]
  shards = []
  for name, future in zip(names, [store.read(n + ".lengths") for n in names]):
    if (result := future.result()).state == "missing":
      raise RuntimeError(f"{name}.lengths was not written by the pipeline.")
    lengths_n = np.frombuffer(result.value, "<i4")
    shards.append({"name": name, "documents": len(lengths_n),
                   "tokens": int(lengths_n.sum(dtype=np.int64))})
  return {"documents": sum(s["documents"] for s in shards),
          "tokens": sum(s["tokens"] for s in shards), "shards": shards}
