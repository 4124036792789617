"""Global rows -> mixed by weight -> this host's share of each global batch.

Global row r comes from one source, chosen by the mixture from r alone; the
source's row index is the rows it gave before r. Global batch k is rows
[R + kB, R + (k+1)B) of the stream, R the rows consumed when the iterator
was made, and host h of n reads the contiguous B/n of them at h B/n. So the
batches are the same on any number of hosts, processes, devices or Grain
worker processes, and the position is one number per source.

Mixture (deterministic, even): the weights become integer quotas q_s that
sum to Q = 2^20. Source 0 holds ceil(k q_0 / Q) of the first k rows; the
other sources split the rest the same way, recursively (Bresenham's
interleave, the scheme of Grain's `MapDataset.mix`). Every prefix of k rows
holds each source's share to within one row per source.

A checkpoint saves `get_state()`: rows consumed, per source, and the
mixture segment they are counted from. Resuming with the same weights
continues the same segment, so the rows are those of an uninterrupted run;
new weights start a new segment at the current position, each source
continuing where it stood. The global batch size, process and worker counts
may change freely; a changed seq_len, seed or source refuses to resume.
"""

import copy
from typing import Any

import grain
import numpy as np
from absl import flags

STATE_VERSION = 2
QUOTA_TOTAL = 1 << 20


def quotas(weights: dict[str, float]) -> dict[str, int]:
  """Integer shares of QUOTA_TOTAL, in the order given; the last takes the rounding."""
  total = sum(weights.values())
  names = list(weights)
  out = {name: round(weights[name] / total * QUOTA_TOTAL) for name in names[:-1]}
  out[names[-1]] = QUOTA_TOTAL - sum(out.values())
  for name, q in out.items():
    if q <= 0:
      raise ValueError(f"data.mixture weight of {name!r} ({weights[name]}) is too small "
                       f"against the total {total}: below 1/{QUOTA_TOTAL} of the rows.")
  return out


def mixture_counts(quota_S: np.ndarray, k_N: np.ndarray) -> np.ndarray:
  """(N, S) int64: rows of each source among the first k rows of a segment."""
  c_N, remaining = np.asarray(k_N, np.int64), int(quota_S.sum())
  counts = []
  for q in quota_S.tolist():
    rest_N = c_N * (remaining - q) // remaining
    counts.append(c_N - rest_N)
    c_N, remaining = rest_N, remaining - q
  return np.stack(counts, axis=1)


class HostBatches:
  """Random access to this host's batches (a Grain source): batch k holds
  segment rows offset + kB + hb ... offset + kB + (h+1)b - 1."""

  def __init__(self, sources: dict, segment: dict, offset: int, global_batch_size: int,
               process_index: int, process_count: int):
    self.sources = sources
    self.names = list(segment["quotas"])
    self.quota_S = np.asarray([segment["quotas"][n] for n in self.names], np.int64)
    self.base_S = np.asarray([segment["consumed"].get(n, 0) for n in self.names], np.int64)
    self.per_host = global_batch_size // process_count
    self.first = offset + process_index * self.per_host
    self.global_batch_size = global_batch_size

  def __len__(self):
    return 1 << 40  # endless; Grain needs a length

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    j_N = self.first + k * self.global_batch_size + np.arange(self.per_host)
    before_NS = mixture_counts(self.quota_S, j_N)
    source_N = np.argmax(mixture_counts(self.quota_S, j_N + 1) - before_NS, axis=1)
    index_N = self.base_S[source_N] + before_NS[np.arange(len(j_N)), source_N]
    out = None
    for s, name in enumerate(self.names):
      where = np.flatnonzero(source_N == s)
      if not len(where):
        continue
      rows = self.sources[name].rows(index_N[where])
      if out is None:
        out = {f: np.zeros((len(j_N),) + v.shape[1:], v.dtype) for f, v in rows.items()}
      for field, value in rows.items():
        out[field][where] = value
    return out


class DataStream(grain.DatasetIterator):
  """This host's training batches, resumable anywhere (module docstring).

  `sources` maps names to row sources (pipeline/row_sources.py); `weights`
  maps the same names to positive weights.
  """

  def __init__(self, sources: dict, weights: dict[str, float], *, global_batch_size: int,
               seq_len: int, seed: int, process_index: int, process_count: int,
               worker_count: int = 0):
    super().__init__()
    self._sources, self._weights = sources, dict(weights)
    self._batch, self._slot = global_batch_size, (process_index, process_count)
    self._worker_count = worker_count
    self._identity = {"seq_len": seq_len, "seed": seed}
    self._rows = 0
    self._segment = {"start": 0, "quotas": quotas(weights), "consumed": {}}
    self._inner = None

  def _make_inner(self):
    offset = self._rows - self._segment["start"]
    batches = grain.MapDataset.source(HostBatches(
        self._sources, self._segment, offset, self._batch, *self._slot))
    # One thread reads ahead two batches while the step runs; Grain's default
    # (16 threads, 500 batches) would fight the step for the cores.
    batches = batches.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if self._worker_count:
      if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags
        raise ValueError(
            f"data.worker_count={self._worker_count} needs parsed absl flags: run "
            "under absl.app.run (behind `if __name__ == '__main__':`, since workers "
            "are spawned), or call absl.flags.FLAGS.mark_as_parsed() first.")
      batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count))
    return iter(batches)

  def __next__(self) -> dict[str, np.ndarray]:
    if self._inner is None:
      self._inner = self._make_inner()
    batch = next(self._inner)
    self._rows += self._batch
    return batch

  def consumed(self) -> dict[str, int]:
    """Rows each source has given so far."""
    seg = self._segment
    names = list(seg["quotas"])
    counts_S = mixture_counts(np.asarray([seg["quotas"][n] for n in names], np.int64),
                              np.asarray([self._rows - seg["start"]]))[0]
    return {n: seg["consumed"].get(n, 0) + int(c) for n, c in zip(names, counts_S)}

  def get_state(self) -> dict[str, Any]:
    return {"version": STATE_VERSION, **self._identity, "rows": self._rows,
            "consumed": self.consumed(), "segment": copy.deepcopy(self._segment),
            "sources": {n: s.identity for n, s in self._sources.items()}}

  def set_state(self, state: dict[str, Any]):
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"data position version {state.get('version')!r} is not "
                       f"{STATE_VERSION}: it was saved by another pipeline version.")
    for name, value in self._identity.items():
      if state[name] != value:
        raise ValueError(
            f"the data position was saved with data.{name}={state[name]!r} and this run "
            f"has data.{name}={value!r}: the rows themselves would differ. Restore "
            f"with data.{name}={state[name]!r}, or start a fresh data stream.")
    for name, source in self._sources.items():
      saved = state["sources"].get(name)
      if saved is not None and saved != source.identity:
        raise ValueError(
            f"the data position of source {name!r} was saved for {saved} and this run "
            f"reads {source.identity}: another store or split. Restore with the "
            "saved store, or give this one another name in data.stores.")
    self._rows = state["rows"]
    if state["segment"]["quotas"] == quotas(self._weights):
      self._segment = copy.deepcopy(state["segment"])
    else:  # new weights: a new segment, each source continuing where it stood
      self._segment = {"start": self._rows, "quotas": quotas(self._weights),
                       "consumed": {n: state["consumed"].get(n, 0) for n in self._weights}}
    self.close()
    self._inner = None

  def close(self):
    """Stops worker processes, if any (they also stop when collected)."""
    close = getattr(self._inner, "close", None)
    if close:
      close()
