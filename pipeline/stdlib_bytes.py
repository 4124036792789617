"""Byte-level rows from the running interpreter's standard library sources.

A stand-in for the smoke run until the Grain pipeline (SentencePiece, packing,
TFDS/ArrayRecord) lands: no download, deterministic, and real text.
"""

import pathlib
import sysconfig

import numpy as np


def stdlib_files() -> list[pathlib.Path]:
  """The stdlib's .py files outside test folders, in a fixed order."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  return sorted(p for p in root.rglob("*.py")
                if not any(part in ("test", "tests", "idle_test", "site-packages")
                           for part in p.parts))


def byte_rows(split: str, seq_len: int, max_bytes: int = 2_000_000) -> np.ndarray:
  """Rows of `seq_len` bytes; every 10th file is validation, the rest train.

  Returns int32 (rows, seq_len). Each file is one document, cut into rows
  that each start a new document (the positions restart at 0 per row).
  """
  if split not in ("train", "validation"):
    raise ValueError(f"split={split!r} must be 'train' or 'validation'")
  chunks, total = [], 0
  for i, path in enumerate(stdlib_files()):
    if (i % 10 == 9) != (split == "validation"):
      continue
    data = np.frombuffer(path.read_bytes(), np.uint8)
    usable = len(data) // seq_len * seq_len
    chunks.append(data[:usable].reshape(-1, seq_len))
    total += usable
    if total >= max_bytes:
      break
  return np.concatenate(chunks).astype(np.int32)


def byte_batches(split: str, seq_len: int, global_batch_size: int, seed: int | None,
                 process_index: int = 0, process_count: int = 1, max_bytes: int = 2_000_000):
  """A resumable Grain iterator of this host's rows of each global batch.

  `seed=None` keeps file order (evaluation). Global batch k is the same whatever the process count (shuffled rows
  k*B..(k+1)*B-1); host i takes rows i*B/n..(i+1)*B/n-1 of it, so 1 host x 8
  devices and 2 hosts x 4 devices train on identical batches. Each row is one
  document: segment_pos = 0..T-1.
  """
  import grain  # local: the byte rows themselves do not need Grain

  if global_batch_size % process_count:
    raise ValueError(f"data.global_batch_size={global_batch_size} is not divisible by "
                     f"the process count {process_count}")
  per_host = global_batch_size // process_count
  rows_NT = byte_rows(split, seq_len, max_bytes)
  segment_pos_T = np.arange(seq_len, dtype=np.int32)

  def host_rows(batch_BT):
    rows_bT = batch_BT[process_index * per_host:(process_index + 1) * per_host]
    return {"tokens": rows_bT,
            "segment_pos": np.broadcast_to(segment_pos_T, rows_bT.shape).copy()}

  dataset = grain.MapDataset.source(rows_NT)
  if seed is not None:  # None: in order (evaluation)
    dataset = dataset.shuffle(seed=seed)
  dataset = dataset.repeat().batch(global_batch_size, drop_remainder=True).map(host_rows)
  return iter(dataset.to_iter_dataset())


class ByteTokenizer:
  """Text <-> the byte ids these rows hold (vocabulary 256, no BOS or EOS)."""

  vocab_size = 256
  bos_id = -1  # SentencePiece's value for "none"
  eos_id = -1

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [list(text.encode("utf-8")) for text in texts]

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
