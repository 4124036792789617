"""Row sources: random access to the packed rows of one split.

Every source answers `rows(indices_N)` with a dict of (N, T) int32 arrays,
`tokens`, `segment_pos` and `loss_mask`, where row i is a pure function of
the source, T, the seed and i; and an `identity` that changes exactly when
the rows would. `pipeline/row_stream.py` mixes, batches and slices them.

  StoreRows       a split of a token store, packed by `packing_plan`
  SyntheticRows   the paper's synthetic tasks, generated (pipeline/synthetic.py)
  ByteRows        the stdlib's bytes, one row-sized piece per row (tests, tiny runs)
"""

import hashlib
import json

import numpy as np

from pipeline import packing_plan
from pipeline import stdlib_bytes
from pipeline import synthetic
from pipeline import token_store

FIELDS = ("tokens", "segment_pos", "loss_mask")


class StoreRows:
  """Packed rows of one split of a token store (see packing_plan)."""

  def __init__(self, directory: str, split: str, seq_len: int, seed: int):
    manifest = token_store.read_manifest(directory)
    self.split = token_store.open_split(directory, manifest, split)
    self.plan = packing_plan.SplitRows(self.split.lengths_N, seq_len, seed)
    self.seq_len = seq_len
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    self.identity = {"store_sha256": digest[:16], "split": split}

  def rows_per_epoch(self) -> int:
    return self.plan.epoch(0).num_rows

  def rows(self, indices_N: np.ndarray) -> dict[str, np.ndarray]:
    plans = [self.plan.row(int(i)) for i in indices_N]
    tokens = iter(self.split.read([piece for plan in plans for piece in plan]))
    out = {name: np.zeros((len(plans), self.seq_len), np.int32) for name in FIELDS}
    for n, plan in enumerate(plans):
      t = 0
      for _ in plan:
        ids = next(tokens)
        out["tokens"][n, t:t + len(ids)] = ids
        out["segment_pos"][n, t:t + len(ids)] = np.arange(len(ids))
        out["loss_mask"][n, t + 1:t + len(ids)] = 1  # not a piece's first token
        t += len(ids)
    return out


class SyntheticRows:
  """A synthetic task's rows: train rows from the seed, validation rows from
  one fixed stream whatever the seed."""

  def __init__(self, dataset: str, split: str, seq_len: int, seed: int):
    synthetic.check(dataset, seq_len)
    self.args = (dataset, split, seq_len, seed)
    self.identity = {"dataset": dataset, "split": split}

  def rows(self, indices_N: np.ndarray) -> dict[str, np.ndarray]:
    return synthetic.rows_at(*self.args, indices_N)


class ByteRows:
  """The stdlib's bytes cut into rows (each row a document of its own, all
  targets counted); train rows shuffled by seed and epoch, validation rows in
  file order."""

  def __init__(self, split: str, seq_len: int, seed: int | None,
               max_bytes: int = 2_000_000):
    import grain  # the shuffle whose row order the tests have pinned
    rows_NT = stdlib_bytes.byte_rows(split, seq_len, max_bytes)
    rows = grain.MapDataset.source(rows_NT)
    self._rows = (rows.shuffle(seed=seed) if seed is not None else rows).repeat()
    self.seq_len = seq_len
    self.identity = {"dataset": "stdlib_bytes", "split": split}

  def rows(self, indices_N: np.ndarray) -> dict[str, np.ndarray]:
    tokens = np.stack([self._rows[int(i)] for i in indices_N]).astype(np.int32)
    return {"tokens": tokens,
            "segment_pos": np.broadcast_to(np.arange(self.seq_len, dtype=np.int32),
                                           tokens.shape).copy(),
            "loss_mask": np.ones_like(tokens)}
