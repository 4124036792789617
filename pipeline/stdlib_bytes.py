"""Byte-level rows from the running interpreter's standard library sources.

Real text with no tokenizer and nothing to build: the row source of the tests
and the tiny configs (`data.dataset="stdlib_bytes"`, vocabulary 256).
"""

import pathlib

import numpy as np

from pipeline.documents import stdlib_files


def byte_rows(split: str, seq_len: int, max_bytes: int = 2_000_000) -> np.ndarray:
  """Rows of `seq_len` bytes; every 10th file is validation, the rest train.

  Returns int32 (rows, seq_len). Each file is one document, cut into rows
  that each start a new document (the positions restart at 0 per row).
  """
  if split not in ("train", "validation"):
    raise ValueError(f"split={split!r} must be 'train' or 'validation'")
  chunks, total = [], 0
  # Sorted as paths, not strings: the order the pinned losses were measured on.
  for i, path in enumerate(sorted(map(pathlib.Path, stdlib_files()[0]))):
    if (i % 10 == 9) != (split == "validation"):
      continue
    data = np.frombuffer(path.read_bytes(), np.uint8)
    usable = len(data) // seq_len * seq_len
    chunks.append(data[:usable].reshape(-1, seq_len))
    total += usable
    if total >= max_bytes:
      break
  return np.concatenate(chunks).astype(np.int32)


class ByteTokenizer:
  """Text <-> the byte ids these rows hold (vocabulary 256, no BOS or EOS)."""

  vocab_size = 256
  bos_id = -1  # SentencePiece's value for "none"
  eos_id = -1

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [list(text.encode("utf-8")) for text in texts]

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
