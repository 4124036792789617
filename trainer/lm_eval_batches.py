"""Host-side batching for the lm-eval adapter: requests of any length become
batches of a few fixed shapes.

lm-eval sends requests of every length. Each batch here has the same number
of rows and a length from a small fixed set of buckets, so a jitted function
compiles at most once per bucket however many requests there are, never once
per request. Host arrays only (no lm-eval), so it is tested on its own.
"""

from typing import Iterator

import numpy as np

from model.sampling import left_pad

SMALLEST_BUCKET = 64


def length_buckets(max_length: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
  """Powers of two from `smallest` below `max_length`, then `max_length`:
  e.g. 2048 -> (64, 128, 256, 512, 1024, 2048). A row is padded to the first
  bucket that holds it, so padding costs at most 2x the row's work."""
  if not isinstance(max_length, int) or max_length < 2:
    raise ValueError(f"max_length={max_length!r} must be an integer >= 2")
  buckets, length = [], smallest
  while length < max_length:
    buckets.append(length)
    length *= 2
  return (*buckets, max_length)


def bucket_of(length: int, buckets: tuple[int, ...]) -> int:
  """The first bucket that holds `length` tokens."""
  for bucket in buckets:
    if length <= bucket:
      return bucket
  raise ValueError(f"{length} tokens do not fit the largest bucket {buckets[-1]}")


def score_row(context_ids: list[int], continuation_ids: list[int],
              max_length: int) -> tuple[list[int], list[int], int]:
  """(inputs, targets, scored) as lm-eval's Hugging Face model builds a row:
  context + continuation cut from the left to `max_length` + 1 tokens; the
  inputs are all but its last token, the targets all but its first, and the
  last `scored` = len(continuation) targets are the continuation."""
  whole = (context_ids + continuation_ids)[-(max_length + 1):]
  return whole[:-1], whole[1:], len(continuation_ids)


def _by_bucket(lengths: list[int], batch_size: int,
               buckets: tuple[int, ...]) -> Iterator[tuple[int, list[int]]]:
  """(bucket, indices of up to `batch_size` rows), longest rows first."""
  groups = {}
  for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
    groups.setdefault(bucket_of(lengths[i], buckets), []).append(i)
  for bucket, indices in groups.items():
    for start in range(0, len(indices), batch_size):
      yield bucket, indices[start:start + batch_size]


def score_batches(rows: list[tuple[list[int], list[int], int]], batch_size: int,
                  buckets: tuple[int, ...]) -> Iterator[tuple]:
  """(indices, tokens_BT, targets_BT, scored_BT) per batch of `score_row`
  rows. Rows are right-padded (the model is causal: tokens after a row's end
  never change its earlier logits) and the batch is filled up to
  `batch_size` with empty rows that score nothing."""
  for T, indices in _by_bucket([len(inputs) for inputs, _, _ in rows], batch_size, buckets):
    tokens_BT = np.zeros((batch_size, T), np.int32)
    targets_BT = np.zeros((batch_size, T), np.int32)
    scored_BT = np.zeros((batch_size, T), bool)
    for b, i in enumerate(indices):
      inputs, targets, scored = rows[i]
      tokens_BT[b, :len(inputs)] = inputs
      targets_BT[b, :len(targets)] = targets
      scored_BT[b, len(inputs) - scored:len(inputs)] = True
    yield indices, tokens_BT, targets_BT, scored_BT


def prompt_batches(prompts: list[list[int]], batch_size: int, buckets: tuple[int, ...],
                   filler: list[int]) -> Iterator[tuple]:
  """(indices, tokens_BT, segment_pos_BT) per batch of prompts, left-padded
  to their bucket as `model.sampling.left_pad` pads (each pad a one-token
  document that the prompt never sees); missing rows are `filler`."""
  for T, indices in _by_bucket([len(p) for p in prompts], batch_size, buckets):
    rows = [prompts[i] for i in indices] + [filler] * (batch_size - len(indices))
    tokens_BT, segment_pos_BT = left_pad(rows)
    pad = ((0, 0), (T - tokens_BT.shape[1], 0))
    yield indices, np.pad(tokens_BT, pad), np.pad(segment_pos_BT, pad)
