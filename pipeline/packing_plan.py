"""Which document pieces make row r of a split: a pure function of
(document lengths, seq_len, seed, r), computed without reading any token.

Epoch e orders the documents by a permutation seeded with (seed, e) and cuts
that order into windows of about WINDOW_TOKENS tokens. A window of S tokens
fills exactly ceil(S (1 + SLACK) / T) rows, so the first row of every window
(and so of any row r) follows from the windows' token sums alone: one
vectorised pass over the index, whatever the corpus size. Inside a window:

  1. a document longer than T becomes pieces of T tokens (each a row of its
     own) and a remainder; nothing is truncated;
  2. the remainders and the short documents are packed first-fit decreasing
     into the window's other rows;
  3. the few that fit no row whole are cut into the gaps left (each part
     restarts its positions at 0): SLACK makes them rare, and padding is
     about SLACK (docs/data.md has both, measured);
  4. the window's rows are put in a seeded order.

A window is planned only when one of its rows is read. Source row i runs
through epoch 0's rows, then epoch 1's (a new order), and so on.
"""

import bisect
import functools

import numpy as np

WINDOW_TOKENS = 1 << 20  # packed together: a row's worth of rounding per million tokens
SLACK = 0.01  # spare room per window, so that first-fit rarely has to cut a document
_ORDER_TAG, _ROWS_TAG = 0x6F726472, 0x726F7773  # seed words of the two shuffles

Piece = tuple[int, int, int]  # (document, first token, stop token)


class Epoch:
  """The rows of one epoch: their count at once, each window's pieces on demand."""

  def __init__(self, lengths_N: np.ndarray, seq_len: int, seed: int, epoch: int):
    self.lengths_N, self.seq_len, self.seed, self.epoch = lengths_N, seq_len, seed, epoch
    n = len(lengths_N)
    # Shuffled in place, as Generator.permutation(n) would (the same order) but
    # without its int64 copy: this order is the one per-document array an
    # epoch keeps beside the index.
    self.order_N = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    np.random.default_rng((_ORDER_TAG, seed, epoch)).shuffle(self.order_N)
    ordered_N = lengths_N[self.order_N]
    start_N = np.cumsum(ordered_N, dtype=np.int64)
    start_N -= ordered_N
    start_N //= WINDOW_TOKENS  # each document's window: that of its first token
    first_N = np.empty(n, bool)
    first_N[:1] = True
    np.not_equal(start_N[1:], start_N[:-1], out=first_N[1:])
    del start_N
    self.first_doc_W = np.flatnonzero(first_N)
    tokens_W = np.add.reduceat(ordered_N, self.first_doc_W, dtype=np.int64)
    rows_W = np.ceil(tokens_W * (1 + SLACK) / seq_len).astype(np.int64)
    self.first_row_W = np.concatenate([[0], np.cumsum(rows_W)])
    self.num_rows = int(self.first_row_W[-1])

  def row(self, r: int) -> list[Piece]:
    """The pieces of row r of this epoch, in row order."""
    w = int(np.searchsorted(self.first_row_W, r, side="right")) - 1
    return self._window(w)[r - int(self.first_row_W[w])]

  @functools.lru_cache(maxsize=4)
  def _window(self, w: int) -> list[list[Piece]]:
    stop = self.first_doc_W[w + 1] if w + 1 < len(self.first_doc_W) else len(self.order_N)
    documents = self.order_N[self.first_doc_W[w]:stop]
    num_rows = int(self.first_row_W[w + 1] - self.first_row_W[w])
    rows = pack_window(documents, self.lengths_N[documents], self.seq_len, num_rows)
    order = np.random.default_rng((_ROWS_TAG, self.seed, self.epoch, w)).permutation(num_rows)
    return [rows[i] for i in order]


def pack_window(documents: np.ndarray, lengths: np.ndarray, seq_len: int,
                num_rows: int) -> list[list[Piece]]:
  """Steps 1-3 of the module docstring: `num_rows` rows of pieces."""
  full, rest = [], []
  for d, n in zip(documents.tolist(), lengths.tolist()):
    whole = n // seq_len
    full.extend([(d, k * seq_len, (k + 1) * seq_len)] for k in range(whole))
    if n % seq_len:
      rest.append((d, whole * seq_len, n))
  rows: list[list[Piece]] = [[] for _ in range(num_rows - len(full))]
  free = np.full(len(rows), seq_len, np.int64)
  left = []
  for piece in sorted(rest, key=lambda p: p[1] - p[2]):  # longest first, stable
    size = piece[2] - piece[1]
    fits = np.flatnonzero(free >= size)
    if len(fits):
      rows[fits[0]].append(piece)
      free[fits[0]] -= size
    else:
      left.append(piece)
  for d, start, stop in left:  # into the gaps, in row order
    while start < stop:
      i = int(np.flatnonzero(free)[0])
      take = min(int(free[i]), stop - start)
      rows[i].append((d, start, start + take))
      free[i] -= take
      start += take
  return full + rows


class SplitRows:
  """Row i of a split, over all epochs: (epoch, pieces)."""

  def __init__(self, lengths_N: np.ndarray, seq_len: int, seed: int):
    if not len(lengths_N):
      raise ValueError("a split without documents has no rows")
    self.lengths_N, self.seq_len, self.seed = lengths_N, seq_len, seed
    self._epochs: dict[int, Epoch] = {}
    self._first_row_E = [0]  # first source row of each epoch planned so far

  def __getstate__(self):  # a worker process plans the epochs it needs itself
    return {"lengths_N": self.lengths_N, "seq_len": self.seq_len, "seed": self.seed}

  def __setstate__(self, state):
    self.__init__(**state)

  def epoch(self, e: int) -> Epoch:
    if e not in self._epochs:
      if len(self._epochs) >= 2:  # keep the current and the next epoch
        del self._epochs[min(self._epochs)]
      self._epochs[e] = Epoch(self.lengths_N, self.seq_len, self.seed, e)
    return self._epochs[e]

  def row(self, i: int) -> list[Piece]:
    """The pieces of source row i (epochs counted in, planned as reached)."""
    while i >= self._first_row_E[-1]:
      e = len(self._first_row_E) - 1
      self._first_row_E.append(self._first_row_E[-1] + self.epoch(e).num_rows)
    e = bisect.bisect_right(self._first_row_E, i) - 1
    return self.epoch(e).row(i - self._first_row_E[e])


def padding_fraction(lengths_N: np.ndarray, seq_len: int, seed: int = 0) -> float:
  """The padding of one epoch's rows: (row tokens - document tokens) / row tokens."""
  rows = Epoch(lengths_N, seq_len, seed, 0).num_rows
  return 1 - float(lengths_N.sum(dtype=np.int64)) / (rows * seq_len)
