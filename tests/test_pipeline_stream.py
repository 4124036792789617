"""The Grain pipeline: packed-row invariants, host slices, exact resume, eval
stream, global arrays. Runs on a 40-file stdlib subset (see the fixtures)."""

import collections
import dataclasses
import json

import jax
from absl import flags
import numpy as np
import pytest

from pipeline import grain_pipeline
from pipeline.global_batch import make_global_batch
from sharding.config import MeshConfig
from sharding.mesh import make_mesh
from sharding.rules import batch_sharding
from tests.test_pipeline_fixtures import all_documents, small_stdlib


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  return small_stdlib(tmp_path_factory)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _pieces(row):
  """The token pieces of one packed row, checking the row format on the way."""
  segment_ids, segment_pos = row["segment_ids"], row["segment_pos"]
  real = segment_ids > 0
  n_real = int(real.sum())
  assert real[:n_real].all(), "padding only at the end of a row"
  assert (row["tokens"][~real] == 0).all() and (segment_pos[~real] == 0).all()
  np.testing.assert_array_equal(row["loss_mask"], (segment_pos > 0).astype(np.int32))
  pieces = []
  for s in range(1, int(segment_ids.max(initial=0)) + 1):
    where = np.flatnonzero(segment_ids == s)
    assert len(where) > 0 and (np.diff(where) == 1).all(), "segments are contiguous"
    np.testing.assert_array_equal(segment_pos[where], np.arange(len(where)))
    pieces.append(row["tokens"][where])
  return pieces


def test_batches_have_the_packed_row_format(small):
  config, tokenizer = small
  iterator = grain_pipeline.train_iterator(config, tokenizer, 0, 1)
  for batch in _take(iterator, 3):
    assert set(batch) == {"tokens", "segment_ids", "segment_pos", "loss_mask"}
    for name, value in batch.items():
      assert value.shape == (8, 64) and value.dtype == np.int32, name
    for row in _rows(batch):
      assert _pieces(row)


def _rows(batch):
  return [{name: value[i] for name, value in batch.items()}
          for i in range(len(batch["tokens"]))]


@pytest.mark.parametrize("process_count", [1, 2])
def test_one_epoch_over_all_hosts_loses_no_token(small, process_count):
  config, tokenizer = small
  documents = all_documents(config, tokenizer, "train")
  pieces = []
  for index in range(process_count):
    rows = grain_pipeline.packed_rows(
        config, tokenizer, "train", shuffle=True, process_index=index,
        process_count=process_count, num_epochs=1)
    for row in rows:
      assert len(row["tokens"]) == config.seq_len
      pieces.extend(_pieces(row))
  assert max(len(p) for p in pieces) <= config.seq_len
  assert len(pieces) > len(documents), "long documents were split into pieces"
  # Each document starts with BOS exactly once: no document lost or repeated.
  assert sum(p[0] == tokenizer.bos_id for p in pieces) == len(documents)
  packed = collections.Counter(np.concatenate(pieces).tolist())
  assert packed == collections.Counter(np.concatenate(documents).tolist())


def test_host_slices_are_disjoint_and_cover_each_epoch():
  n, epochs = 103, []  # odd: host 0 gets 52 documents an epoch, host 1 gets 51
  for index in range(2):
    indices = list(grain_pipeline.host_document_indices(
        n, shuffle=True, seed=7, process_index=index, process_count=2, num_epochs=2))
    half = len(indices) // 2
    epochs.append((indices[:half], indices[half:]))
  for epoch in range(2):
    host0, host1 = set(epochs[0][epoch]), set(epochs[1][epoch])
    assert not host0 & host1 and host0 | host1 == set(range(n))
  assert epochs[0][0] != epochs[0][1], "each epoch is shuffled anew"


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_gives_the_batches_of_an_uninterrupted_run(small, workers):
  config, tokenizer = small
  config = dataclasses.replace(config, worker_count=workers)
  if workers:
    flags.FLAGS.mark_as_parsed()  # as absl.app.run would; Grain's workers read flags
  iterator = grain_pipeline.train_iterator(config, tokenizer, 0, 1)
  _take(iterator, 30)  # past several read batches and packing flushes
  state = json.loads(json.dumps(iterator.get_state()))
  expected = _take(iterator, 20)
  iterator.close()
  resumed = grain_pipeline.train_iterator(config, tokenizer, 0, 1)
  resumed.set_state(state)
  for want, got in zip(expected, _take(resumed, 20)):
    for name in want:
      np.testing.assert_array_equal(want[name], got[name])
  resumed.close()


def test_resume_refuses_another_host_count_or_pipeline(small, tmp_path_factory):
  config, tokenizer = small
  saved = grain_pipeline.train_iterator(config, tokenizer, 0, 2).get_state()
  with pytest.raises(ValueError, match="saved with 2 processes.*this run has 1"):
    grain_pipeline.train_iterator(config, tokenizer, 0, 1).set_state(saved)
  longer, _ = small_stdlib(tmp_path_factory, seq_len=128)
  with pytest.raises(ValueError, match="seq_len=64 and this run has seq_len=128"):
    grain_pipeline.train_iterator(longer, tokenizer, 0, 2).set_state(saved)


def test_global_batch_must_split_over_hosts(small):
  config, tokenizer = small
  with pytest.raises(ValueError, match="global_batch_size=8 is not divisible by the 3"):
    grain_pipeline.train_iterator(config, tokenizer, 0, 3)


def test_eval_stream_is_fixed_and_unshuffled(small):
  config, tokenizer = small
  first = grain_pipeline.eval_batches(config, tokenizer, 3, 0, 1)
  again = grain_pipeline.eval_batches(config, tokenizer, 3, 0, 1)
  assert len(first) == 3
  for a, b in zip(first, again):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  document = all_documents(config, tokenizer, "validation")[0][:config.seq_len]
  np.testing.assert_array_equal(first[0]["tokens"][0, :len(document)], document)
  with pytest.raises(ValueError, match="fewer than the 100000 asked for"):
    grain_pipeline.eval_batches(config, tokenizer, 100_000, 0, 1)


def test_global_arrays_on_eight_devices(small):
  config, tokenizer = small
  mesh = make_mesh(MeshConfig(ici_data=8))
  sharding = batch_sharding(mesh)
  host_batch = next(grain_pipeline.train_iterator(config, tokenizer, 0, 1))
  global_batch = make_global_batch(host_batch, sharding)
  assert len(jax.devices()) == 8
  for name, array in global_batch.items():
    assert array.shape == (8, 64) and array.sharding == sharding
    assert {shard.data.shape for shard in array.addressable_shards} == {(1, 64)}
    np.testing.assert_array_equal(np.asarray(array), host_batch[name])
