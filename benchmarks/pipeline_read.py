"""The read and scale parts of benchmarks/pipeline.py (its docstring says
what they measure): stores of random ids, `streams.train_stream` timed in a
fresh process per row, locally and on the GCS emulator, and the memory of a
host as the corpus grows.

`python -m benchmarks.pipeline_read '<spec as JSON>'` is one such process
(`child`); benchmarks/pipeline.py starts them.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app

SHARDS = 16
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {  # documents' token counts, by profile (benchmarks/pipeline.py's docstring)
    "short": lambda n: (np.random.default_rng(0).exponential(40, n) + 3).astype(np.int64),
    "long": lambda n: np.exp(np.random.default_rng(1).uniform(
        math.log(12), math.log(1200), n)).astype(np.int64)}


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What the read and scale parts read: benchmarks/pipeline.py's flags."""
  vocab_size: int
  seq_len: int
  batch: int
  seconds: float  # timed a read row
  read_docs: int
  client_reads: int  # ranged reads per client in the tensorstore/gcsfs comparison
  scale_docs: tuple[int, ...]
  scale_batches: int


def table(rows: list[dict]) -> str:
  """Markdown, a column per key of the first row; floats >= 100 as integers."""
  cell = lambda v: (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}") if isinstance(
      v, float) else f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
  lines = ["| " + " | ".join(rows[0]) + " |", "|---" + "|---:" * (len(rows[0]) - 1) + "|"]
  return "\n".join([*lines, *("| " + " | ".join(map(cell, r.values())) + " |" for r in rows)])


def rss_mib(field: str = "VmHWM") -> float:
  """This process's peak (VmHWM) or current (VmRSS) resident memory. Not
  getrusage's ru_maxrss: Linux carries into it the RSS of the process that
  forked this one (344 MiB for a child of this benchmark, 199 fresh)."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def child(spec: dict):
  """One measurement in this (fresh) process, printed as a JSON line."""
  from pipeline import streams
  from pipeline.config import DataConfig
  out = {}
  if spec["stores"]:
    config = DataConfig(stores=spec["stores"], seq_len=spec["seq_len"],
                        global_batch_size=spec["batch"], worker_count=spec["workers"])
    start = time.perf_counter()
    stream = streams.train_stream(config, spec["vocab"], 0, 1)
    next(stream)
    out.update(first_s=time.perf_counter() - start, rss_first=rss_mib())
    tokens = real = batches = 0
    start = time.perf_counter()
    while batches < spec["batches"] or time.perf_counter() - start < spec["seconds"]:
      tokens_BT = next(stream)["tokens"]
      tokens, real = tokens + tokens_BT.size, real + int(np.count_nonzero(tokens_BT))
      batches += 1
    out.update(seconds=time.perf_counter() - start, tokens=tokens, real=real, batches=batches)
    stream.close()
  out.update(rss_peak=rss_mib(), rss_now=rss_mib("VmRSS"))
  print(json.dumps(out), flush=True)


def run_child(sizes: Sizes, stores: str = "", workers: int = 0, seconds: float = 0,
              batches: int = 0) -> dict:
  spec = dict(stores=stores, workers=workers, seconds=seconds, batches=batches,
              vocab=sizes.vocab_size, seq_len=sizes.seq_len, batch=sizes.batch)
  done = subprocess.run([sys.executable, "-m", "benchmarks.pipeline_read", json.dumps(spec)],
                        cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
  return json.loads(done.stdout.splitlines()[-1])


def write_store(directory: str, lengths_N: np.ndarray, seed: int, vocab_size: int) -> int:
  """A train split of random ids (4..vocab) of these lengths, as the build
  writes it (a complete one is reused); returns its tokens."""
  from pipeline import token_store
  try:
    return token_store.read_manifest(directory)["splits"]["train"]["tokens"]
  except ValueError:
    pass
  rng, shards = np.random.default_rng(seed), []
  for i in range(SHARDS):
    lengths_n = lengths_N[i::SHARDS]
    tokens = rng.integers(4, vocab_size, int(lengths_n.sum()),
                          dtype=token_store.token_dtype(vocab_size))
    documents = np.split(tokens, np.cumsum(lengths_n)[:-1])
    counts = token_store.write_shard(directory, "train", i, SHARDS, documents, vocab_size)
    shards.append({"name": token_store.shard_name("train", i, SHARDS), **counts})
  tokens = sum(s["tokens"] for s in shards)
  token_store.write_manifest(directory, {
      "source": {"dataset": "random", "seed": seed}, "counts": {},
      "tokenizer": {"path": "", "sha256": "0" * 64, "vocab_size": vocab_size,
                    "bos_id": 2, "eos_id": 1},
      "dtype": token_store.token_dtype(vocab_size).str,
      "splits": {"train": {"documents": len(lengths_N), "tokens": tokens, "shards": shards}}})
  return tokens


def read_part(work: str, sizes: Sizes) -> list[dict]:
  from pipeline import token_store
  from tests.gcs_emulator import GcsEmulator
  lengths = {"short": LENGTHS["short"](sizes.read_docs),
             "long": LENGTHS["long"](sizes.read_docs // 10)}
  local = {name: f"{work}/read_{name}_{len(n)}" for name, n in lengths.items()}
  tokens = {name: write_store(local[name], lengths[name], 2, sizes.vocab_size)
            for name in lengths}
  emulator = GcsEmulator(tempfile.mkdtemp(dir=work, prefix="gcs_")).start()
  # For this process and the children; a fixed token keeps tensorstore from
  # looking for credentials (metadata.google.internal): loopback only.
  os.environ.update(emulator.env)
  rows = []
  try:
    bucket = emulator.make_bucket("bench")
    for name, path in local.items():
      source, target = token_store.kvstore(path), token_store.kvstore(f"{bucket}/{name}")
      for key in source.list().result():
        target.write(key, source[key]).result()
    for name in lengths:
      for where, workers in (("local", 0), ("local", 2), ("gcs", 0)):
        store = local[name] if where == "local" else f"{bucket}/{name}"
        r = run_child(sizes, f"{name}={store}", workers, seconds=sizes.seconds)
        rows.append({"documents": name, "count": len(lengths[name]),
                     "store tokens": tokens[name], "store": where, "worker_count": workers,
                     "first s": r["first_s"], "batches": r["batches"],
                     "tokens/s": r["tokens"] / r["seconds"],
                     "real tokens/s": r["real"] / r["seconds"]})
        print(f"read {rows[-1]}", file=sys.stderr, flush=True)
    compare = compare_clients(f"{bucket}/short", local["short"], sizes.client_reads)
  finally:
    emulator.stop()
  print(f"\n### read: train_stream, T={sizes.seq_len}, B={sizes.batch}, "
        f"{sizes.seconds:.0f} s a row\n")
  print(table(rows))
  print("\n### ranged reads on the GCS emulator: tensorstore vs gcsfs\n")
  print(table(compare))
  return rows


def compare_clients(remote: str, local: str, reads: int) -> list[dict]:
  import gcsfs
  from pipeline import token_store
  split = token_store.open_split(remote, token_store.read_manifest(local), "train")
  size = split.dtype.itemsize
  documents_K = np.random.default_rng(3).integers(0, split.num_documents, reads + 50)
  pieces = [(int(d), 0, int(split.lengths_N[d])) for d in documents_K]
  paths = [f"{remote[len('gs://'):]}/{split.shards[split.shard_of(d)]}.tokens"
           for d in documents_K]
  starts = [int(split.starts_N[d]) * size for d in documents_K]
  stops = [int(split.starts_N[d] + split.lengths_N[d]) * size for d in documents_K]
  fs = gcsfs.GCSFileSystem(token="anon")
  readers = {"tensorstore": lambda a, b: [x.astype(split.dtype).tobytes()
                                          for x in split.read(pieces[a:b])],
             "gcsfs": lambda a, b: fs.cat_ranges(paths[a:b], starts[a:b], stops[a:b])}
  results, rows = {}, []
  for name, read in readers.items():
    read(reads, reads + 50)  # warmup: connections
    start = time.perf_counter()
    results[name] = read(0, reads)
    seconds = time.perf_counter() - start
    rows.append({"library": name, "reads": reads, "seconds": seconds,
                 "reads/s": reads / seconds, "MB/s": sum(map(len, results[name])) / 1e6 / seconds,
                 "same bytes": results[name] == results["tensorstore"]})
  return rows


def scale_part(work: str, sizes: Sizes) -> list[dict]:
  base, rows = run_child(sizes), []
  for n in sorted(sizes.scale_docs):
    start = time.perf_counter()
    tokens = write_store(f"{work}/scale_{n}", LENGTHS["short"](n), 4, sizes.vocab_size)
    print(f"scale store {n:,}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    r = run_child(sizes, f"scale={work}/scale_{n}", batches=sizes.scale_batches)
    rows.append({"documents": n, "tokens": tokens, "index MiB": 12 * n / 2**20,
                 "first batch s": r["first_s"], "peak RSS MiB (first)": r["rss_first"],
                 f"peak RSS MiB (+{r['batches']})": r["rss_peak"], "RSS now MiB": r["rss_now"],
                 "peak above baseline MiB": r["rss_peak"] - base["rss_peak"],
                 "now above baseline MiB": r["rss_now"] - base["rss_now"]})
  print(f"\n### scale: first batch and memory, T={sizes.seq_len}, B={sizes.batch}; baseline "
        f"(import pipeline.streams) peak {base['rss_peak']:.0f}, now {base['rss_now']:.0f} MiB\n")
  print(table(rows))
  return rows


if __name__ == "__main__":
  # Under absl's app.run: Grain's worker processes (worker_count > 0) need parsed flags.
  app.run(lambda argv: child(json.loads(argv[1])))
