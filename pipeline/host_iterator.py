"""The training iterator of one host, with a state that refuses a wrong resume.

Each host reads every process_count-th document of the global shuffle and
packs its own rows, so a saved state means something only for the same host
slot of the same number of hosts. A restore with another process count (or
another pipeline config) raises a ValueError naming the saved and current
values; it never duplicates or skips data silently. To change the host count,
start a fresh stream (e.g. a new data.shuffle_seed) — docs/data.md.
"""

from typing import Any

import grain

from pipeline.config import DataConfig

STATE_VERSION = 1


class HostIterator(grain.DatasetIterator):
  """Batches of one host; get_state()/set_state() are JSON-able dicts.

  A grain.DatasetIterator, so `grain.checkpoint.CheckpointSave(it)` (Orbax)
  saves it as JSON, one file per process.
  """

  def __init__(self, inner: grain.DatasetIterator, config: DataConfig,
               process_index: int, process_count: int, vocab_size: int):
    super().__init__(inner)
    self._inner = inner
    # Everything that changes which rows this host produces.
    self._identity = {
        "process_count": process_count, "process_index": process_index,
        "dataset": config.dataset, "files": config.files,
        "split": config.train_split, "max_files": config.max_files,
        "validation_fraction": config.validation_fraction,
        "seq_len": config.seq_len, "global_batch_size": config.global_batch_size,
        "shuffle_seed": config.shuffle_seed, "worker_count": config.worker_count,
        "vocab_size": vocab_size,
    }

  def __next__(self) -> dict[str, Any]:
    return next(self._inner)

  def get_state(self) -> dict[str, Any]:
    return {"version": STATE_VERSION, **self._identity,
            "grain": self._inner.get_state()}

  def set_state(self, state: dict[str, Any]):
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"data iterator state version {state.get('version')!r} is not "
                       f"{STATE_VERSION}; it was saved by another pipeline version.")
    saved, now = state["process_count"], self._identity["process_count"]
    if saved != now:
      raise ValueError(
          f"the data iterator state was saved with {saved} processes (hosts) and "
          f"this run has {now}: each host's documents and rows depend on the "
          "host count, so resuming would repeat or skip data. Resume with "
          f"{saved} processes, or start a fresh data stream (docs/data.md).")
    for name, value in self._identity.items():
      if state.get(name) != value:
        raise ValueError(
            f"the data iterator state was saved with {name}={state.get(name)!r} "
            f"and this run has {name}={value!r}; the saved position means "
            "nothing for another pipeline. Restore with the saved value, or "
            "start a fresh data stream.")
    self._inner.set_state(state["grain"])

  def close(self):
    """Stops worker processes, if any (they also stop when collected)."""
    close = getattr(self._inner, "close", None)
    if close:
      close()
