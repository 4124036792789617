"""Per-document transforms of the Grain pipeline: read, tokenize, split, format.

A packed row (all int32, length seq_len):
  tokens       token ids; 0 at padding
  segment_ids  1, 2, ... per document piece in the row; 0 at padding
  segment_pos  position inside the piece, restarting at 0; 0 at padding, so
               each padding token is a document of its own to the model
  loss_mask    1 where tokens[t] is a real target of position t-1 (same piece,
               not padding); 0 at every piece's first token and at padding
"""

import threading

import grain
import numpy as np
from absl import logging

from pipeline.tokenizer import Tokenizer, document_ids


class Counts:
  """Thread-safe counters that log (once per `add`) whenever a count reaches a
  power of two: the first skip of a kind shows at once, and a long run logs a
  few dozen lines, not one per document."""

  def __init__(self, where: str):
    self._where, self._lock, self.values = where, threading.Lock(), {}

  def __getstate__(self):  # a Grain worker starts its own counts (and lock)
    return self._where

  def __setstate__(self, where: str):
    self.__init__(where)

  def add(self, **increments: int):
    with self._lock:
      crossed = False
      for name, n in increments.items():
        old = self.values.get(name, 0)
        self.values[name] = old + n
        crossed |= (old + n).bit_length() > old.bit_length()
      if crossed:
        logging.info("%s: %s", self._where, dict(self.values))


class ReadAndTokenize:
  """Document indices -> a list of BOS + ids + EOS arrays, one batched read.

  ArrayRecord single-record reads slow down on large files; `__getitems__`
  reads a whole batch at once. Empty texts are skipped and counted; bytes
  that are not UTF-8 are replaced with U+FFFD and counted.
  """

  def __init__(self, source, text_feature: str, tokenizer: Tokenizer):
    self._source, self._feature, self._tokenizer = source, text_feature, tokenizer
    self.counts = Counts(f"reading feature {text_feature!r}")

  def __call__(self, indices_K: np.ndarray) -> list[np.ndarray]:
    keys = [int(i) for i in indices_K]
    if hasattr(self._source, "__getitems__"):
      records = self._source.__getitems__(keys)
    else:
      records = [self._source[k] for k in keys]
    texts, empty, replaced = [], 0, 0
    for record in records:
      text = record[self._feature]
      if isinstance(text, (bytes, np.bytes_)):
        try:
          text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
          text, replaced = bytes(text).decode("utf-8", errors="replace"), replaced + 1
      if not isinstance(text, str):
        raise ValueError(f"feature {self._feature!r} holds {type(text).__name__}, "
                         "not text; set data.text_feature to a text feature.")
      if text.strip():
        texts.append(text)
      else:
        empty += 1
    self.counts.add(documents=len(texts), empty_skipped=empty,
                    invalid_utf8_replaced=replaced)
    return [document_ids(self._tokenizer, ids)
            for ids in self._tokenizer.encode_batch(texts)]


class SplitLongDocuments(grain.experimental.FlatMapTransform):
  """A list of documents -> pieces of at most `seq_len` tokens, each a dict.

  First-fit packing needs every input to fit a row; a longer document becomes
  consecutive pieces (never truncated), each restarting at position 0.
  """

  max_fan_out = 1 << 30  # only checked by MapDataset flat maps; ours is an IterDataset

  def __init__(self, seq_len: int):
    self._seq_len = seq_len
    self.counts = Counts(f"documents longer than seq_len={seq_len}, split")

  def flat_map(self, documents: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    pieces, split, made = [], 0, 0
    for ids in documents:
      if len(ids) > self._seq_len:
        parts = np.split(ids, range(self._seq_len, len(ids), self._seq_len))
        split, made = split + 1, made + len(parts)
        pieces.extend({"tokens": part} for part in parts)
      else:
        pieces.append({"tokens": ids})
    self.counts.add(split_documents=split, pieces_of_split_documents=made)
    return pieces


def format_row(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Grain's packed fields -> the row format in this module's docstring."""
  segment_ids = packed["tokens_segment_ids"].astype(np.int32)
  segment_pos = packed["tokens_positions"].astype(np.int32)
  return {
      "tokens": packed["tokens"].astype(np.int32),
      "segment_ids": segment_ids,
      "segment_pos": segment_pos,
      "loss_mask": ((segment_pos > 0) & (segment_ids > 0)).astype(np.int32),
  }
