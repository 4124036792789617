"""Rows as a pure function of the global row index: packing plan, token-store
reads (local and gs://), host counts, workers, resume anywhere, mixtures."""

import dataclasses
import os

import numpy as np
import pytest
from absl import flags

from pipeline import packing_plan
from pipeline import streams
from pipeline import token_store
from pipeline.config import DataConfig

VOCAB = 300
SEQ_LEN = 64


def write_store(directory: str, lengths_by_split: dict, seed: int, num_shards: int = 3):
  """A store of random documents (BOS 2 ... EOS 1), as the Beam build writes it."""
  rng = np.random.default_rng(seed)
  splits, documents = {}, {}
  for split, lengths in lengths_by_split.items():
    docs = [np.concatenate([[2], rng.integers(4, VOCAB, n - 2), [1]]) for n in lengths]
    documents[split] = docs
    shards = []
    for i in range(num_shards):
      part = docs[i::num_shards]
      counts = token_store.write_shard(directory, split, i, num_shards, part, VOCAB)
      shards.append({"name": token_store.shard_name(split, i, num_shards), **counts})
    splits[split] = {"documents": len(docs), "tokens": sum(s["tokens"] for s in shards),
                     "shards": shards}
  token_store.write_manifest(directory, {
      "source": {"dataset": "random", "seed": seed},
      "tokenizer": {"path": "", "sha256": "0" * 64, "vocab_size": VOCAB, "bos_id": 2,
                    "eos_id": 1},
      "dtype": token_store.token_dtype(VOCAB).str, "splits": splits, "counts": {}})
  return documents


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
  """Two stores: 'web' (short documents) and 'code' (some longer than a row)."""
  root = tmp_path_factory.mktemp("stores")
  rng = np.random.default_rng(0)
  docs = {}
  for name, scale in (("web", 20), ("code", 60)):
    lengths = {"train": (rng.exponential(scale, 300) + 3).astype(int),
               "validation": (rng.exponential(scale, 150) + 3).astype(int)}
    docs[name] = write_store(str(root / name), lengths, seed=len(name))
  return {name: str(root / name) for name in docs}, docs


def config_for(paths, **overrides):
  stores_flag = ",".join(f"{name}={path}" for name, path in paths.items())
  values = dict(stores=stores_flag, seq_len=SEQ_LEN, global_batch_size=8, shuffle_seed=3)
  return DataConfig(**{**values, **overrides})


def take(stream, n):
  return [next(stream) for _ in range(n)]


def glued(host_batches_by_host):
  """Global batches from every host's batches, hosts in process order."""
  return [{k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
          for batches in zip(*host_batches_by_host)]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_every_document_token_is_in_exactly_one_row_per_epoch():
  rng = np.random.default_rng(1)
  lengths = (rng.exponential(40, 2000) + 3).astype(np.int64)
  epoch = packing_plan.Epoch(lengths, SEQ_LEN, seed=5, epoch=0)
  covered = [np.zeros(n, int) for n in lengths]
  for r in range(epoch.num_rows):
    pieces = epoch.row(r)
    assert sum(b - a for _, a, b in pieces) <= SEQ_LEN
    for d, a, b in pieces:
      covered[d][a:b] += 1
  assert all((c == 1).all() for c in covered)
  pieces = sum(len(epoch.row(r)) for r in range(epoch.num_rows))
  assert pieces == sum(-(-int(n) // SEQ_LEN) for n in lengths)  # only long ones are cut
  # About the window's SLACK (1%): below first-fit's 2.4-5.5%.
  assert 0.005 < packing_plan.padding_fraction(lengths, SEQ_LEN) < 0.015
  other = packing_plan.Epoch(lengths, SEQ_LEN, seed=5, epoch=1)
  assert [other.row(r) for r in range(5)] != [epoch.row(r) for r in range(5)]


def test_rows_hold_whole_pieces_of_the_stored_documents(stores):
  paths, docs = stores
  config = config_for({"code": paths["code"]})
  batch = next(streams.train_stream(config, VOCAB, 0, 1))
  assert set(batch) == {"tokens", "segment_pos", "loss_mask"}
  text = {tuple(d) for d in docs["code"]["train"]}
  for tokens, pos, mask in zip(batch["tokens"], batch["segment_pos"], batch["loss_mask"]):
    np.testing.assert_array_equal(mask, (pos > 0).astype(np.int32))
    starts = list(np.flatnonzero(pos == 0))
    for a, b in zip(starts, starts[1:] + [SEQ_LEN]):
      piece = tuple(tokens[a:b])
      if any(piece) and len(piece) > 3:  # a piece of one stored document
        assert any(piece == d[i:i + len(piece)] for d in text
                   for i in range(0, len(d) - len(piece) + 1)), piece


@pytest.mark.parametrize("hosts", [2, 4])
def test_global_batches_are_the_same_on_any_number_of_hosts(stores, hosts):
  paths, _ = stores
  config = config_for(paths, mixture="web:0.7,code:0.3")
  single = take(streams.train_stream(config, VOCAB, 0, 1), 4)
  several = glued([take(streams.train_stream(config, VOCAB, h, hosts), 4)
                   for h in range(hosts)])
  assert_same(several, single)


def test_worker_processes_give_the_same_batches(stores):
  paths, _ = stores
  config = config_for(paths)
  flags.FLAGS.mark_as_parsed()
  expected = take(streams.train_stream(config, VOCAB, 0, 1), 3)
  workers = streams.train_stream(dataclasses.replace(config, worker_count=2), VOCAB, 0, 1)
  try:
    assert_same(take(workers, 3), expected)
  finally:
    workers.close()


def resumed(config, state, hosts, batches):
  """The next `batches` global batches after restoring `state` on `hosts` hosts."""
  streams_h = []
  for h in range(hosts):
    stream = streams.train_stream(config, VOCAB, h, hosts)
    stream.set_state(state)
    streams_h.append(take(stream, batches))
  return glued(streams_h)


def test_resume_on_another_host_count_reads_the_rows_of_an_uninterrupted_run(stores):
  paths, _ = stores
  config = config_for(paths, mixture="web:2,code:1")
  straight = take(streams.train_stream(config, VOCAB, 0, 1), 6)
  first = [streams.train_stream(config, VOCAB, h, 2) for h in range(2)]
  for stream in first:
    take(stream, 3)
  state = first[0].get_state()
  assert state == first[1].get_state() and state["rows"] == 24
  for hosts in (1, 4):
    assert_same(resumed(config, state, hosts, 3), straight[3:])


def test_a_changed_global_batch_continues_at_the_next_row(stores):
  paths, _ = stores
  config = config_for(paths, mixture="web:1,code:1")
  rows = take(streams.train_stream(dataclasses.replace(config, global_batch_size=4), VOCAB,
                                   0, 1), 10)
  flat = {k: np.concatenate([b[k] for b in rows]) for k in rows[0]}  # rows 0..39
  stream = streams.train_stream(config, VOCAB, 0, 1)  # B = 8
  take(stream, 2)  # rows 0..15
  bigger = streams.train_stream(dataclasses.replace(config, global_batch_size=12), VOCAB, 0, 1)
  bigger.set_state(stream.get_state())
  got = take(bigger, 2)  # rows 16..39
  for k in flat:
    np.testing.assert_array_equal(np.concatenate([b[k] for b in got]), flat[k][16:40])


def test_mixture_proportions_and_new_weights_continue_each_source(stores):
  paths, _ = stores
  config = config_for(paths, mixture="web:0.7,code:0.3", global_batch_size=40)
  stream = streams.train_stream(config, VOCAB, 0, 1)
  take(stream, 25)  # 1000 rows
  consumed = stream.consumed()
  assert sum(consumed.values()) == 1000
  # Deterministic interleave: within one row of 70% (binomial sd would be 14.5).
  assert abs(consumed["web"] - 700) <= 1
  state = stream.get_state()
  # The next rows of each source alone, as a single-source run would read them.
  alone = {}
  for name in paths:
    solo = streams.train_stream(config_for({name: paths[name]}, global_batch_size=1), VOCAB, 0, 1)
    solo.set_state({**solo.get_state(), "rows": consumed[name],
                    "consumed": {name: consumed[name]},
                    "segment": {"start": 0, "quotas": {name: 1 << 20}, "consumed": {}}})
    alone[name] = [next(solo)["tokens"][0] for _ in range(40)]
  changed = streams.train_stream(dataclasses.replace(config, mixture="web:0.2,code:0.8"),
                                 VOCAB, 0, 1)
  changed.set_state(state)
  tokens = next(changed)["tokens"]
  after = changed.consumed()
  taken = {n: after[n] - consumed[n] for n in paths}
  assert taken == {"web": 8, "code": 32}
  expected = {tuple(row) for n in paths for row in alone[n][:taken[n]]}
  assert {tuple(row) for row in tokens} == expected


def test_a_store_on_gcs_is_read_without_local_copies(stores, gcs_bucket, tmp_path):
  paths, _ = stores
  remote = f"{gcs_bucket}/stores/code"
  local = token_store.kvstore(paths["code"])
  target = token_store.kvstore(remote)
  for key in local.list().result():
    target.write(key, local[key]).result()
  before = set(os.listdir(tmp_path))
  config = config_for({"code": remote})
  home = os.environ.get("HOME")
  os.environ["HOME"] = str(tmp_path)  # any cache under ~ would land here
  try:
    from_gcs = take(streams.train_stream(config, VOCAB, 0, 1), 2)
  finally:
    os.environ["HOME"] = home
  assert set(os.listdir(tmp_path)) == before
  assert_same(from_gcs, take(streams.train_stream(config_for({"code": paths["code"]}), VOCAB,
                                                  0, 1), 2))


def test_validation_sample_is_fixed_and_spread_over_the_split(stores):
  paths, docs = stores
  config = config_for({"web": paths["web"]})
  (first,) = streams.eval_streams(config, VOCAB, 2, 0, 1).values()
  (again,) = streams.eval_streams(dataclasses.replace(config, shuffle_seed=9), VOCAB,
                                  2, 0, 1).values()
  batches = take(first, 2)
  assert_same(batches, take(again, 2))
  # Rows 0..15 of the plan: documents from all over the split, not its first ones.
  first_tokens = {tuple(d[:4]) for d in docs["web"]["validation"]}
  starts = {tuple(b["tokens"][r, :4]) for b in batches for r in range(8)
            if b["segment_pos"][r, 0] == 0 and tuple(b["tokens"][r, :4]) in first_tokens}
  where = sorted(i for i, d in enumerate(docs["web"]["validation"]) if tuple(d[:4]) in starts)
  assert where and where[-1] > len(docs["web"]["validation"]) // 2
  with pytest.raises(ValueError, match=r"holds \d+ rows of data.seq_len=64, fewer than the "
                     r"1000 batches x 8 rows"):
    streams.eval_streams(config, VOCAB, 1000, 0, 1)


def test_changes_that_alter_rows_are_refused_by_name(stores):
  paths, _ = stores
  config = config_for(paths)
  state = streams.train_stream(config, VOCAB, 0, 1).get_state()
  for change, field in ((dict(seq_len=32), "seq_len"), (dict(shuffle_seed=4), "seed")):
    with pytest.raises(ValueError, match=rf"data.{field}=.* and this run has data.{field}="):
      streams.train_stream(dataclasses.replace(config, **change), VOCAB, 0, 1).set_state(state)
  swapped = config_for({"web": paths["code"], "code": paths["web"]})
  with pytest.raises(ValueError, match="another store or split"):
    streams.train_stream(swapped, VOCAB, 0, 1).set_state(state)


def test_bad_stores_and_mixtures_are_named(stores, tmp_path):
  paths, _ = stores
  with pytest.raises(ValueError, match=r"names source 'wiki', which is not one of"):
    config_for(paths, mixture="web:1,wiki:1")
  with pytest.raises(ValueError, match=r"weight of 'code' is '0'; weights must be positive"):
    config_for(paths, mixture="web:1,code:0")
  with pytest.raises(ValueError, match="does not exist"):
    streams.train_stream(config_for({"x": str(tmp_path / "none")}), VOCAB, 0, 1)
  half = tmp_path / "half"
  half.mkdir()
  (half / "train-00000-of-00001.tokens").write_bytes(b"\0\0")
  with pytest.raises(ValueError, match="is half-written"):
    streams.train_stream(config_for({"x": str(half)}), VOCAB, 0, 1)
  with pytest.raises(ValueError, match="vocabulary of 300 and the model has model.vocab_size=512"):
    streams.train_stream(config_for(paths), 512, 0, 1)
