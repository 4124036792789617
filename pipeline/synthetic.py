"""The paper's synthetic tasks (§6.2, App. H) as built-in datasets.

Every row is one document (segment_pos 0..T-1) of `data.seq_len` tokens,
generated from (seed, split, row index) alone: a row source of the one
index-based pipeline (pipeline/row_sources.py). Rows carry a `loss_mask`
that is 1 only at the answer tokens, the ones the task scores.

Data tokens are ids 0..15 (`DATA_VOCAB`); the special tokens follow them.

selective_copying (vocabulary 18; T >= 33)
  positions 0..T-18   the context: 16 data tokens at random distinct
                      positions, in order, every other position NOISE (16)
  position  T-17      COPY (17)
  positions T-16..T-1 the 16 data tokens again, in context order: the
                      answers (loss_mask 1), each predicted from the token
                      before it (teacher forcing)

induction_heads (vocabulary 17; T >= 4)
  every position      a random data token, except:
  position  p         TRIGGER (16), p uniform in [0, T-4]
  position  p+1       x, the token to recall (a random data token)
  position  T-2       TRIGGER again
  position  T-1       x: the answer (loss_mask 1), predicted at the second
                      TRIGGER from the one earlier occurrence

Both follow the layouts of Gu and Dao (2023, Mamba) that the paper's App. H
describes, written as next-token prediction so the ordinary trainer and
evaluator run them. No model import: this is data.
"""

import numpy as np

SELECTIVE_COPYING = "selective_copying"
INDUCTION_HEADS = "induction_heads"

DATA_VOCAB = 16  # data tokens 0..15 in both tasks (paper: vocabulary 16)
COPY_TOKENS = 16  # data tokens to copy per row (paper: 16)
NOISE, COPY = DATA_VOCAB, DATA_VOCAB + 1  # selective copying
TRIGGER = DATA_VOCAB  # induction heads

VOCAB_SIZE = {SELECTIVE_COPYING: DATA_VOCAB + 2, INDUCTION_HEADS: DATA_VOCAB + 1}
SPECIAL_TOKENS = {SELECTIVE_COPYING: "NOISE=16, COPY=17", INDUCTION_HEADS: "TRIGGER=16"}
# The shortest row that holds the layout: selective copying needs room for the
# 16 data tokens, COPY and the 16 answers; induction heads a trigger with its
# token before the final trigger and answer.
MIN_SEQ_LEN = {SELECTIVE_COPYING: 2 * COPY_TOKENS + 1, INDUCTION_HEADS: 4}
DATASETS = tuple(VOCAB_SIZE)

# The first word of each row's seed: train rows follow the run's seed, the
# validation rows are one fixed stream, so runs with any seed are scored on
# the same examples and never on rows they trained on.
_TRAIN_STREAM, _VALIDATION_STREAM = 0x7261696E, 0x76616C69
SPLITS = ("train", "validation")


def selective_copying_row(rng: np.random.Generator, seq_len: int):
  """(tokens_T, loss_mask_T) of one selective-copying row."""
  context = seq_len - COPY_TOKENS - 1
  tokens_T = np.full(seq_len, NOISE, np.int32)
  data_M = rng.integers(0, DATA_VOCAB, COPY_TOKENS, dtype=np.int32)
  where_M = np.sort(rng.choice(context, COPY_TOKENS, replace=False))
  tokens_T[where_M] = data_M
  tokens_T[context] = COPY
  tokens_T[context + 1:] = data_M
  loss_mask_T = np.zeros(seq_len, np.int32)
  loss_mask_T[context + 1:] = 1
  return tokens_T, loss_mask_T


def induction_heads_row(rng: np.random.Generator, seq_len: int):
  """(tokens_T, loss_mask_T) of one induction-heads row."""
  tokens_T = rng.integers(0, DATA_VOCAB, seq_len, dtype=np.int32)
  first = int(rng.integers(0, seq_len - 3))  # p in [0, T-4]: p+1 < T-2
  tokens_T[first] = TRIGGER
  tokens_T[-2] = TRIGGER
  tokens_T[-1] = tokens_T[first + 1]
  loss_mask_T = np.zeros(seq_len, np.int32)
  loss_mask_T[-1] = 1
  return tokens_T, loss_mask_T


_ROWS = {SELECTIVE_COPYING: selective_copying_row, INDUCTION_HEADS: induction_heads_row}


def _check_dataset(dataset: str):
  if dataset not in _ROWS:
    raise ValueError(f"data.dataset={dataset!r} is not a synthetic task; valid: {list(DATASETS)}.")


def check(dataset: str, seq_len: int):
  """A ValueError naming the dataset or length that does not fit."""
  _check_dataset(dataset)
  if seq_len < MIN_SEQ_LEN[dataset]:
    raise ValueError(f"data.seq_len={seq_len} is too short for data.dataset={dataset!r}: "
                     f"its layout needs at least {MIN_SEQ_LEN[dataset]} tokens.")


def check_vocab(dataset: str, vocab_size: int):
  """The model must have exactly the task's vocabulary."""
  _check_dataset(dataset)
  if vocab_size != VOCAB_SIZE[dataset]:
    raise ValueError(
        f"model.vocab_size={vocab_size} does not match data.dataset={dataset!r}, whose "
        f"vocabulary is {VOCAB_SIZE[dataset]} ({DATA_VOCAB} data tokens 0..{DATA_VOCAB - 1}, "
        f"{SPECIAL_TOKENS[dataset]}); set --config.model.vocab_size={VOCAB_SIZE[dataset]}.")


def rows(dataset: str, split: str, seq_len: int, seed: int, start: int, count: int) -> dict:
  """Rows start..start+count-1 of a split (see `rows_at`)."""
  return rows_at(dataset, split, seq_len, seed, np.arange(start, start + count))


def rows_at(dataset: str, split: str, seq_len: int, seed: int, indices_N) -> dict:
  """The rows of a split at `indices_N`, as (N, T) int32 arrays: tokens,
  segment_pos (0..T-1, one document per row), loss_mask."""
  check(dataset, seq_len)
  if split not in SPLITS:
    raise ValueError(f"split={split!r} must be one of {list(SPLITS)}.")
  make_row = _ROWS[dataset]
  stream = (_TRAIN_STREAM, seed) if split == "train" else (_VALIDATION_STREAM, 0)
  tokens, masks = zip(*(make_row(np.random.default_rng((*stream, int(index))), seq_len)
                        for index in indices_N))
  tokens_NT = np.stack(tokens)
  return {"tokens": tokens_NT,
          "segment_pos": np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                         tokens_NT.shape).copy(),
          "loss_mask": np.stack(masks)}


class IdTokenizer:
  """Ids <-> text for a synthetic task: tokens are written as their numbers
  ("3 16 7"); there is no BOS or EOS."""

  bos_id = -1  # SentencePiece's value for "none"
  eos_id = -1

  def __init__(self, dataset: str):
    _check_dataset(dataset)
    self.vocab_size = VOCAB_SIZE[dataset]

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    ids = [[int(word) for word in text.split()] for text in texts]
    for text, row in zip(texts, ids):
      if any(not 0 <= i < self.vocab_size for i in row):
        raise ValueError(f"{text!r} has a token outside the vocabulary 0..{self.vocab_size - 1}")
    return ids

  def decode(self, ids) -> str:
    return " ".join(str(int(i)) for i in ids)
