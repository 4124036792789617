"""The Grain pipeline: per-host batches of packed rows, and the eval stream.

Per host: document indices -> global shuffle by seed (a new order each epoch)
-> this host's slice (every process_count-th index) -> batched read + tokenize
-> split documents longer than a row -> first-fit packing into rows ->
batches of global_batch_size / process_count rows -> optional worker processes.
Slices of different hosts are disjoint and together cover each epoch.
Row fields: see `pipeline/packing.py`.
"""

import grain
import numpy as np
from absl import flags

from pipeline import packing
from pipeline import sources
from pipeline.config import DataConfig
from pipeline.host_iterator import HostIterator
from pipeline.tokenizer import Tokenizer

READ_BATCH = 32  # documents per batched read (and per tokenizer call)
PACKING_BINS = 16  # rows filled at once; more bins = less padding, more memory
# Two threads read+tokenize ahead; a small buffer bounds memory (the default
# 500 read batches would hold ~16k documents).
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def process_slot(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(index, count) of this host; JAX's when not given (tests pass them)."""
  if process_index is None or process_count is None:
    import jax  # Deferred: the pipeline and its workers run without JAX.
    process_index, process_count = jax.process_index(), jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, "
                     f"process_count={process_count}).")
  return process_index, process_count


def host_batch_size(config: DataConfig, process_count: int) -> int:
  """Rows per host batch; the global batch must split evenly over the hosts."""
  if config.global_batch_size % process_count:
    raise ValueError(f"data.global_batch_size={config.global_batch_size} is not "
                     f"divisible by the {process_count} processes (hosts); use a "
                     f"multiple of {process_count}.")
  return config.global_batch_size // process_count


def host_document_indices(num_documents: int, *, shuffle: bool, seed: int,
                          process_index: int, process_count: int,
                          num_epochs: int | None) -> grain.MapDataset:
  """This host's document indices: shuffled globally, then every
  process_count-th; `num_epochs=None` repeats forever, reshuffling each epoch."""
  if num_documents < process_count:
    raise ValueError(f"the split has {num_documents} documents, fewer than the "
                     f"{process_count} processes; every host needs at least one.")
  indices = grain.MapDataset.range(num_documents)
  if shuffle:
    indices = indices.shuffle(seed=seed)
  return indices[process_index::process_count].repeat(num_epochs)


def packed_rows(config: DataConfig, tokenizer: Tokenizer, split: str, *,
                shuffle: bool, process_index: int, process_count: int,
                num_epochs: int | None, build_if_missing: bool = False):
  """This host's packed rows of `split` (a grain.IterDataset of row dicts)."""
  source = sources.data_source(config, split, build_if_missing)
  indices = host_document_indices(
      len(source), shuffle=shuffle, seed=config.shuffle_seed,
      process_index=process_index, process_count=process_count,
      num_epochs=num_epochs)
  documents = indices.batch(READ_BATCH).map(
      packing.ReadAndTokenize(source, config.text_feature, tokenizer))
  pieces = grain.experimental.FlatMapIterDataset(
      documents.to_iter_dataset(READ_OPTIONS),
      packing.SplitLongDocuments(config.seq_len))
  rows = grain.experimental.FirstFitPackIterDataset(
      pieces, length_struct={"tokens": config.seq_len},
      num_packing_bins=PACKING_BINS, seed=config.shuffle_seed, shuffle_bins=shuffle)
  return rows.map(packing.format_row)


def train_iterator(config: DataConfig, tokenizer: Tokenizer,
                   process_index: int | None = None, process_count: int | None = None,
                   build_if_missing: bool = False) -> HostIterator:
  """The endless training stream of this host's batches (numpy, int32 (B, T)).

  B = global_batch_size / process_count. Its `get_state()` is a JSON-able dict
  and `set_state()` resumes exactly; see `HostIterator` for the host-count rule.
  """
  process_index, process_count = process_slot(process_index, process_count)
  rows = packed_rows(config, tokenizer, config.train_split, shuffle=True,
                     process_index=process_index, process_count=process_count,
                     num_epochs=None, build_if_missing=build_if_missing)
  batches = rows.batch(host_batch_size(config, process_count), drop_remainder=True)
  if config.worker_count:
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags
      raise ValueError(
          f"data.worker_count={config.worker_count} needs parsed absl flags: run "
          "under absl.app.run (behind `if __name__ == '__main__':`, since workers "
          "are spawned), or call absl.flags.FLAGS.mark_as_parsed() first.")
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.worker_count))
  return HostIterator(iter(batches), config, process_index, process_count,
                      tokenizer.vocab_size)


def eval_batches(config: DataConfig, tokenizer: Tokenizer, num_batches: int,
                 process_index: int | None = None, process_count: int | None = None,
                 build_if_missing: bool = False) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` host batches of the eval split, unshuffled.

  The same list on every call (deterministic), so evaluations are comparable;
  kept in memory (num_batches x B x T ints). Raises if this host's slice of
  the split cannot fill them, rather than repeating documents.
  """
  process_index, process_count = process_slot(process_index, process_count)
  rows = packed_rows(config, tokenizer, config.eval_split, shuffle=False,
                     process_index=process_index, process_count=process_count,
                     num_epochs=1, build_if_missing=build_if_missing)
  batch = host_batch_size(config, process_count)
  batches = []
  for host_batch in rows.batch(batch, drop_remainder=True):
    batches.append(host_batch)
    if len(batches) == num_batches:
      return batches
  raise ValueError(
      f"the {config.eval_split!r} split gives this host only {len(batches)} "
      f"batches of {batch} rows x {config.seq_len} tokens, fewer than the "
      f"{num_batches} asked for; ask for fewer eval batches, or a shorter "
      "data.seq_len / data.global_batch_size.")
