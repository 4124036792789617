"""The token store: every document tokenized once, read back by index.

A store is one directory, local or gs://, holding per split and shard:

  <split>-<i>-of-<n>.tokens    the shard's documents, concatenated token ids
                               (little-endian uint16, or uint32 above 65536
                               ids); each document is BOS + ids + EOS
  <split>-<i>-of-<n>.lengths   the length of each of its documents (int32 LE)
  store.json                   what made it (source, tokenizer fingerprint,
                               vocabulary, counts); written last, so a store
                               without it is half-written and never read

Reads go through tensorstore's key-value stores (the same library Orbax
writes checkpoints with): ranged reads of only the bytes a row needs, from
local files or gs:// alike, batched and concurrent. docs/data.md says why
tensorstore, with the measurement.
"""

import hashlib
import json
import os
from typing import Any

import numpy as np
import tensorstore as ts

MANIFEST = "store.json"
FORMAT_VERSION = 1


def kvstore(directory: str) -> ts.KvStore:
  """The key-value store of a local or gs:// directory (keys are file names)."""
  directory = directory.rstrip("/") + "/"
  if directory.startswith("gs://"):
    bucket, _, path = directory[len("gs://"):].partition("/")
    spec = {"driver": "gcs", "bucket": bucket, "path": path}
  elif "://" in directory:
    raise ValueError(f"data store {directory!r}: only local paths and gs:// are supported")
  else:
    spec = {"driver": "file", "path": os.path.abspath(os.path.expanduser(directory)) + "/"}
  return ts.KvStore.open(spec).result()


def token_dtype(vocab_size: int) -> np.dtype:
  """The narrowest unsigned dtype that holds every id of the vocabulary."""
  return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}"


def tokenizer_fingerprint(model_proto: bytes) -> str:
  """What identifies a tokenizer: the SHA-256 of its serialized model."""
  return hashlib.sha256(model_proto).hexdigest()


def write_shard(directory: str, split: str, index: int, count: int,
                documents: list[np.ndarray], vocab_size: int) -> dict[str, int]:
  """Writes one shard (tokens first, lengths second); returns its counts.

  Both files are whole objects: a rerun of a killed build rewrites them with
  the same bytes, and only store.json makes the store readable.
  """
  dtype = token_dtype(vocab_size)
  lengths_N = np.asarray([len(d) for d in documents], "<i4")
  tokens = (np.concatenate(documents) if documents else np.zeros(0)).astype(dtype)
  store, name = kvstore(directory), shard_name(split, index, count)
  store.write(name + ".tokens", tokens.tobytes()).result()
  store.write(name + ".lengths", lengths_N.tobytes()).result()
  return {"documents": len(documents), "tokens": int(lengths_N.sum(dtype=np.int64))}


def write_manifest(directory: str, manifest: dict[str, Any]):
  """Marks the store complete; call after every shard is written."""
  manifest = {"format": FORMAT_VERSION, **manifest}
  kvstore(directory).write(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True)).result()


def read_manifest(directory: str) -> dict[str, Any]:
  """store.json, or a ValueError saying the store is missing or half-written."""
  store = kvstore(directory)
  result = store.read(MANIFEST).result()
  if result.state == "missing":
    found = store.list().result()
    if found:
      raise ValueError(
          f"data store {directory} is half-written: {len(found)} files but no {MANIFEST} "
          "(a build was stopped before it finished); rerun the same "
          "`python -m pipeline.prepare_store` command to finish it.")
    raise ValueError(f"data store {directory} does not exist (no {MANIFEST}); build it "
                     "with `python -m pipeline.prepare_store` (docs/data.md).")
  manifest = json.loads(result.value)
  if manifest.get("format") != FORMAT_VERSION:
    raise ValueError(f"data store {directory} has format {manifest.get('format')!r}; "
                     f"this code reads format {FORMAT_VERSION}: build it again.")
  return manifest


def tokenizer_path(directory: str, manifest: dict) -> str:
  """The tokenizer's path: one the store holds is named relative to it."""
  path = manifest["tokenizer"]["path"]
  if path and not path.startswith("/") and "://" not in path:
    return f"{directory.rstrip('/')}/{path}"
  return path


def check_tokenizer(directory: str, manifest: dict, fingerprint: str, vocab_size: int):
  """The store must be read with the tokenizer and vocabulary that wrote it."""
  made = manifest["tokenizer"]
  if made["vocab_size"] != vocab_size:
    raise ValueError(
        f"data store {directory} was tokenized with a vocabulary of {made['vocab_size']} "
        f"and the model has model.vocab_size={vocab_size}; set model.vocab_size="
        f"{made['vocab_size']}, or build a store with the tokenizer you want.")
  if fingerprint and made["sha256"] != fingerprint:
    raise ValueError(
        f"data store {directory} was tokenized with {tokenizer_path(directory, manifest)} "
        f"(sha256 {made['sha256'][:12]}...), not the given tokenizer (sha256 "
        f"{fingerprint[:12]}...); use data.tokenizer={tokenizer_path(directory, manifest)!r} "
        "or rebuild the store.")


class Split:
  """Random access to one split's documents: lengths in memory, tokens on storage.

  Memory is the index alone: 4 bytes (length) + 8 bytes (first token) per
  document. Pickles without its open store (a Grain worker opens its own).
  """

  def __init__(self, directory: str, name: str, shards: tuple[str, ...],
               lengths_N: np.ndarray, starts_N: np.ndarray, first_doc_S: np.ndarray,
               dtype: np.dtype):
    self.directory, self.name, self.shards, self.dtype = directory, name, shards, dtype
    self.lengths_N, self.starts_N, self.first_doc_S = lengths_N, starts_N, first_doc_S
    self._kv = None

  def __getstate__(self):
    return {**self.__dict__, "_kv": None}

  @property
  def num_documents(self) -> int:
    return len(self.lengths_N)

  def shard_of(self, documents_N) -> np.ndarray:
    """The shard holding each document (empty shards hold none)."""
    return np.searchsorted(self.first_doc_S, documents_N, side="right") - 1

  def read(self, pieces: list[tuple[int, int, int]]) -> list[np.ndarray]:
    """The tokens of each (document, start, stop) piece, one batched read."""
    if self._kv is None:
      self._kv = kvstore(self.directory)
    size = self.dtype.itemsize
    shard_P = self.shard_of([d for d, _, _ in pieces])
    with ts.Batch() as batch:
      futures = [self._kv.read(self.shards[s] + ".tokens",
                               byte_range=slice(int(self.starts_N[d] + a) * size,
                                                int(self.starts_N[d] + b) * size),
                               batch=batch)
                 for s, (d, a, b) in zip(shard_P.tolist(), pieces)]
    return [np.frombuffer(f.result().value, self.dtype).astype(np.int32) for f in futures]


def open_split(directory: str, manifest: dict, split: str) -> Split:
  """Reads the lengths of every shard of `split` (concurrently)."""
  if split not in manifest["splits"]:
    raise ValueError(f"data store {directory} has no split {split!r}; its splits: "
                     f"{sorted(manifest['splits'])}.")
  shards = [s["name"] for s in manifest["splits"][split]["shards"]]
  store = kvstore(directory)
  futures = [store.read(name + ".lengths") for name in shards]
  counts_S = [shard["documents"] for shard in manifest["splits"][split]["shards"]]
  first_doc_S = np.concatenate([[0], np.cumsum(counts_S, dtype=np.int64)])
  if not first_doc_S[-1]:
    raise ValueError(f"data store {directory}: split {split!r} has no documents.")
  # Filled shard by shard: the index is the only per-document memory a host holds.
  lengths_N = np.empty(first_doc_S[-1], np.int32)
  starts_N = np.empty(first_doc_S[-1], np.int64)
  for s, name in enumerate(shards):
    result, futures[s] = futures[s].result(), None  # hold one shard's bytes at a time
    lengths_n = np.frombuffer(result.value, "<i4")
    if result.state == "missing" or len(lengths_n) != counts_S[s]:
      raise ValueError(f"data store {directory}: {name}.lengths is missing or holds "
                       f"{len(lengths_n)} documents where {MANIFEST} says "
                       f"{counts_S[s]}; the store is damaged, build it again.")
    where = slice(first_doc_S[s], first_doc_S[s + 1])
    lengths_N[where] = lengths_n
    np.cumsum(lengths_n, dtype=np.int64, out=starts_N[where])
    starts_N[where] -= lengths_n
  return Split(directory, split, tuple(shards), lengths_N, starts_N, first_doc_S[:-1],
               np.dtype(manifest["dtype"]))
