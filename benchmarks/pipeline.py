"""Input pipeline speed: read + tokenize + pack + batch, tokens/s per host.

Command, from the repository root (about 3 minutes on a shared 2-core CPU):
  python -m benchmarks.pipeline --corpora=stdlib,synthetic --workers=0,2

Corpora: "stdlib" is the default corpus (this Python's standard library, ~650
long train documents); "synthetic" is --synthetic_docs JSONL documents (default
100k, 40-4000 characters, lines drawn from the stdlib) built into ArrayRecord
by the text_files builder. Both use the stdlib's 8k BPE tokenizer, rows of
--seq_len tokens, host batches of --batch rows, data in a temporary directory.

Per row: the train iterator of `pipeline.grain_pipeline` with worker_count =
the row's workers; "start s" is the time to the first batch (worker spawn
included); then batches are taken for --seconds. tokens/s counts every
position of the rows (B*T per batch), "real" excludes padding. The read rows
time 5,000 random records of the synthetic source one `[i]` at a time vs
`__getitems__` batches of 32 (what the pipeline does).
"""

import json
import os
import random
import tempfile
import time

from absl import app, flags

from pipeline import documents, grain_pipeline, prepare, sources
from pipeline.config import DataConfig

_CORPORA = flags.DEFINE_list("corpora", ["stdlib", "synthetic"], "stdlib, synthetic.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "worker_count values to run.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Timed seconds per row.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 512, "Tokens per row.")
_BATCH = flags.DEFINE_integer("batch", 16, "Rows per host batch.")
_DOCS = flags.DEFINE_integer("synthetic_docs", 100_000, "Synthetic documents.")


def synthetic_corpus(directory: str, n: int) -> str:
  """`n` JSONL documents of stdlib lines; returns the glob of the file."""
  rng = random.Random(0)
  paths, _ = documents.stdlib_files()
  lines = [line for p in paths[:200] for line in open(p, encoding="utf-8",
                                                      errors="replace")]
  path = os.path.join(directory, "synthetic.jsonl")
  with open(path, "w") as f:
    for i in range(n):
      size, text = int(40 * 100 ** rng.random()), []  # log-uniform 40..4000
      while sum(map(len, text)) < size:
        text.append(rng.choice(lines))
      f.write(json.dumps({"text": "".join(text), "id": i}) + "\n")
  return path


def measure(config: DataConfig, tokenizer, seconds: float) -> dict:
  start = time.perf_counter()
  iterator = grain_pipeline.train_iterator(config, tokenizer, 0, 1)
  batch = next(iterator)
  started = time.perf_counter()
  tokens = real = batches = 0
  while time.perf_counter() - started < seconds:
    batch = next(iterator)
    tokens += batch["tokens"].size
    real += int((batch["segment_ids"] > 0).sum())
    batches += 1
  elapsed = time.perf_counter() - started
  iterator.close()
  return {"start_s": started - start, "batches": batches,
          "tokens_per_s": tokens / elapsed, "real_per_s": real / elapsed}


def read_speed(config: DataConfig) -> tuple[float, float]:
  """Records/s of single `[i]` reads and of 32-record `__getitems__` reads."""
  source = sources.data_source(config, "train")
  keys = random.Random(1).sample(range(len(source)), 5000)
  start = time.perf_counter()
  for k in keys:
    source[k]
  single = len(keys) / (time.perf_counter() - start)
  start = time.perf_counter()
  for i in range(0, len(keys), 32):
    source.__getitems__(keys[i:i + 32])
  return single, len(keys) / (time.perf_counter() - start)


def main(argv):
  del argv
  data_dir = tempfile.mkdtemp(prefix="pipeline_bench_")
  base = DataConfig(data_dir=data_dir, seq_len=_SEQ_LEN.value,
                    global_batch_size=_BATCH.value)
  tokenizer = prepare.prepare(base, 8192)
  rows = []
  for corpus in _CORPORA.value:
    config = base
    if corpus == "synthetic":
      t = time.perf_counter()
      files = synthetic_corpus(data_dir, _DOCS.value)
      config = DataConfig(**{**base.__dict__, "dataset": "text_files", "files": files,
                             "tokenizer": tokenizer.path})
      sources.prepare(config)
      print(f"synthetic corpus: {_DOCS.value} documents built in "
            f"{time.perf_counter() - t:.1f} s")
      single, batched = read_speed(config)
      print(f"reads: single {single:,.0f} records/s, batched {batched:,.0f} records/s")
    for workers in map(int, _WORKERS.value):
      result = measure(DataConfig(**{**config.__dict__, "worker_count": workers}),
                       tokenizer, _SECONDS.value)
      rows.append((corpus, workers, result))
      print(f"done {corpus} workers={workers}: {result}", flush=True)
  print("\n| corpus | workers | start s | batches | tokens/s | real tokens/s |")
  print("|---|---:|---:|---:|---:|---:|")
  for corpus, workers, r in rows:
    print(f"| {corpus} | {workers} | {r['start_s']:.1f} | {r['batches']} | "
          f"{r['tokens_per_s']:,.0f} | {r['real_per_s']:,.0f} |")


if __name__ == "__main__":
  app.run(main)
