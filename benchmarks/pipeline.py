"""The token-store data path: prepare (Beam build), read (local and gs://), scale.

Commands, from the repository root (full run: about 4 minutes on a shared 2-core
CPU, ~1 GB of disk under $TMPDIR for the 10^7-document store; logs to stderr):
  python -m benchmarks.pipeline
  python -m benchmarks.pipeline --quick               # smoke run, about 1 minute
  python -m benchmarks.pipeline --parts=scale --scale_docs=100000,1000000

prepare: `store_build.build_store` of --prepare_docs JSONL documents (40-4000
characters, log-uniform, of stdlib lines) in --prepare_files files (a file is
Beam's work unit), dataset text_files, 10% validation, with a --vocab_size BPE
trained beforehand and passed as data.tokenizer: read + tokenize + group +
write. tokens: both splits, BOS/EOS included. startup s: the same build of 40
documents (Beam and its worker processes starting). "SentencePiece alone":
encode_batch of the same texts here, 256 a call, no Beam (one worker's ceiling).

read: `streams.train_stream` (one host, --seq_len, --batch rows) on stores of
random ids written with token_store (16 shards): "short" documents of Exp(40)
+ 3 tokens (~47 ranged reads a row at T=2048), "long" ones of 12-1200 tokens,
log-uniform (about the prepare corpus), a tenth as many. gcs: the same store
on a local GCS emulator (tests/conftest.py GcsEmulator, loopback; one Python
thread that reads the whole object for every ranged GET, so its rows measure
the emulator, not the client or GCS). Each row is a fresh process: first s
= train_stream() to the first batch, then batches for --seconds; tokens/s
counts B*T a batch, real tokens/s the ids != 0 (pad is 0, which no store
holds). tensorstore vs gcsfs: the byte ranges of the same random documents of
the short store on the emulator, `Split.read` (one tensorstore batch) against
gcsfs `cat_ranges`, each after a warmup.

scale: a short store of each --scale_docs size, then in a fresh process: first
batch s as above; peak RSS (VmHWM) after it and after --scale_batches more;
RSS now (VmRSS) at the end. Baseline: a fresh process that only imports
pipeline.streams. index MiB: 12 B a document (token_store.Split: length,
start); the epoch's order adds 4 B.

Targets (the issue): >= 1M real tokens/s a process from local disk (the worst
local worker_count=0 row); first batch < 5 s at 10^7 documents; memory not
growing with the corpus beyond the index: RSS growth from the smallest to the
largest scale <= 20 B per added document now (index 12 + order 4, and a
quarter for the allocator); the peak, which adds the temporaries that build
an epoch's order, is reported without a target.
"""

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging

_PARTS = flags.DEFINE_list("parts", ["prepare", "read", "scale"], "prepare, read, scale.")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes everywhere: a smoke run.")
_PREPARE_DOCS = flags.DEFINE_integer("prepare_docs", 20_000, "JSONL documents to build.")
_PREPARE_FILES = flags.DEFINE_integer("prepare_files", 8, "JSONL files they are split into.")
_VOCAB = flags.DEFINE_integer("vocab_size", 4096, "BPE pieces (and the stores' vocabulary).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "Tokens per row.")
_BATCH = flags.DEFINE_integer("batch", 16, "Rows per (global = host) batch.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Timed seconds per read row.")
_READ_DOCS = flags.DEFINE_integer("read_docs", 200_000, "Documents of the short read store.")
_SCALE_DOCS = flags.DEFINE_list("scale_docs", ["100000", "1000000", "10000000"],
                                "Corpus sizes of the scale part.")
_SCALE_BATCHES = flags.DEFINE_integer("scale_batches", 50, "Batches after the first.")
_WORK_DIR = flags.DEFINE_string("work_dir", "", "Keep data here (stores found are "
                                "reused); default: a temporary directory, removed.")
_CHILD = flags.DEFINE_string("child", "", "Internal: one measurement, as JSON.")

SHARDS = 16
QUICK = dict(prepare_docs=2000, read_docs=20_000, seconds=3.0, scale_docs=["10000", "100000"],
             scale_batches=10)


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


def run_child(stores: str = "", workers: int = 0, seconds: float = 0, batches: int = 0) -> dict:
  spec = dict(stores=stores, workers=workers, seconds=seconds, batches=batches,
              vocab=_VOCAB.value, seq_len=_SEQ_LEN.value, batch=_BATCH.value)
  done = subprocess.run(
      [sys.executable, "-m", "benchmarks.pipeline", "--child=" + json.dumps(spec)],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      stdout=subprocess.PIPE, text=True, check=True)
  return json.loads(done.stdout.splitlines()[-1])


def write_store(directory: str, lengths_N: np.ndarray, seed: int) -> int:
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
    tokens = rng.integers(4, _VOCAB.value, int(lengths_n.sum()),
                          dtype=token_store.token_dtype(_VOCAB.value))
    documents = np.split(tokens, np.cumsum(lengths_n)[:-1])
    counts = token_store.write_shard(directory, "train", i, SHARDS, documents, _VOCAB.value)
    shards.append({"name": token_store.shard_name("train", i, SHARDS), **counts})
  tokens = sum(s["tokens"] for s in shards)
  token_store.write_manifest(directory, {
      "source": {"dataset": "random", "seed": seed}, "counts": {},
      "tokenizer": {"path": "", "sha256": "0" * 64, "vocab_size": _VOCAB.value,
                    "bos_id": 2, "eos_id": 1},
      "dtype": token_store.token_dtype(_VOCAB.value).str,
      "splits": {"train": {"documents": len(lengths_N), "tokens": tokens, "shards": shards}}})
  return tokens


LENGTHS = {  # documents' token counts, by profile (module docstring)
    "short": lambda n: (np.random.default_rng(0).exponential(40, n) + 3).astype(np.int64),
    "long": lambda n: np.exp(np.random.default_rng(1).uniform(
        math.log(12), math.log(1200), n)).astype(np.int64)}


def prepare_part(work: str):
  from pipeline import documents, tokenizer as tokenizer_lib
  from pipeline.config import DataConfig
  from pipeline.store_build import build_store
  rng = random.Random(0)
  lines = [line for p in documents.stdlib_files()[0][:200]
           for line in open(p, encoding="utf-8", errors="replace")]
  texts = []
  for _ in range(_PREPARE_DOCS.value):
    size, text = int(40 * 100 ** rng.random()), []  # log-uniform 40..4000
    while sum(map(len, text)) < size:
      text.append(rng.choice(lines))
    texts.append("".join(text))
  for name, docs, files in (("full", texts, _PREPARE_FILES.value), ("tiny", texts[:40], 2)):
    os.makedirs(f"{work}/{name}", exist_ok=True)
    for f in range(files):
      with open(f"{work}/{name}/part{f:03d}.jsonl", "w") as out:
        out.writelines(json.dumps({"text": t}) + "\n" for t in docs[f::files])
  tokenizer = tokenizer_lib.train_tokenizer(iter(texts), _VOCAB.value, max_chars=4_000_000)
  tokenizer_lib.save_tokenizer(tokenizer, f"{work}/tokenizer.model")
  start, encoded = time.perf_counter(), 0
  for i in range(0, len(texts), 256):
    encoded += sum(len(ids) + 2 for ids in tokenizer.encode_batch(texts[i:i + 256]))
  alone_s, rows = time.perf_counter() - start, []
  for workers in (1, 2):
    seconds = {}
    for name in ("tiny", "full"):
      data = DataConfig(dataset="text_files", files=f"{work}/{name}/*.jsonl",
                        tokenizer=f"{work}/tokenizer.model")
      start = time.perf_counter()
      manifest = build_store(data, f"{work}/store_{name}_{workers}_{time.time_ns()}",
                             _VOCAB.value, workers=workers)
      seconds[name] = time.perf_counter() - start
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    rows.append({"workers": workers, "documents": len(texts), "tokens": tokens,
                 "seconds": seconds["full"], "startup s": seconds["tiny"],
                 "tokens/s": tokens / seconds["full"],
                 "tokens/s per worker": tokens / seconds["full"] / workers})
    print(f"prepare {rows[-1]}", file=sys.stderr, flush=True)
  rows.append({"workers": "SentencePiece alone", "documents": len(texts), "tokens": encoded,
               "seconds": alone_s, "startup s": "", "tokens/s": encoded / alone_s,
               "tokens/s per worker": encoded / alone_s})
  print(f"\n### prepare: build_store, {_VOCAB.value}-piece BPE, {_PREPARE_FILES.value} files\n")
  print(table(rows))


def read_part(work: str) -> list[dict]:
  from pipeline import token_store
  from tests.conftest import GcsEmulator  # imports JAX too: a second, never measured
  lengths = {"short": LENGTHS["short"](_READ_DOCS.value),
             "long": LENGTHS["long"](_READ_DOCS.value // 10)}
  local = {name: f"{work}/read_{name}_{len(n)}" for name, n in lengths.items()}
  tokens = {name: write_store(local[name], lengths[name], seed=2) for name in lengths}
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
        r = run_child(f"{name}={store}", workers, seconds=_SECONDS.value)
        rows.append({"documents": name, "count": len(lengths[name]),
                     "store tokens": tokens[name], "store": where, "worker_count": workers,
                     "first s": r["first_s"], "batches": r["batches"],
                     "tokens/s": r["tokens"] / r["seconds"],
                     "real tokens/s": r["real"] / r["seconds"]})
        print(f"read {rows[-1]}", file=sys.stderr, flush=True)
    compare = compare_clients(f"{bucket}/short", local["short"])
  finally:
    emulator.stop()
  print(f"\n### read: train_stream, T={_SEQ_LEN.value}, B={_BATCH.value}, "
        f"{_SECONDS.value:.0f} s a row\n")
  print(table(rows))
  print("\n### ranged reads on the GCS emulator: tensorstore vs gcsfs\n")
  print(table(compare))
  return rows


def compare_clients(remote: str, local: str) -> list[dict]:
  import gcsfs
  from pipeline import token_store
  split = token_store.open_split(remote, token_store.read_manifest(local), "train")
  reads, size = (300 if _QUICK.value else 2000), split.dtype.itemsize
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


def scale_part(work: str) -> list[dict]:
  base, rows = run_child(), []
  for n in sorted(map(int, _SCALE_DOCS.value)):
    start = time.perf_counter()
    tokens = write_store(f"{work}/scale_{n}", LENGTHS["short"](n), seed=4)
    print(f"scale store {n:,}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    r = run_child(f"scale={work}/scale_{n}", batches=_SCALE_BATCHES.value)
    rows.append({"documents": n, "tokens": tokens, "index MiB": 12 * n / 2**20,
                 "first batch s": r["first_s"], "peak RSS MiB (first)": r["rss_first"],
                 f"peak RSS MiB (+{r['batches']})": r["rss_peak"], "RSS now MiB": r["rss_now"],
                 "peak above baseline MiB": r["rss_peak"] - base["rss_peak"],
                 "now above baseline MiB": r["rss_now"] - base["rss_now"]})
  print(f"\n### scale: first batch and memory, T={_SEQ_LEN.value}, B={_BATCH.value}; baseline "
        f"(import pipeline.streams) peak {base['rss_peak']:.0f}, now {base['rss_now']:.0f} MiB\n")
  print(table(rows))
  return rows


def verdicts(read_rows: list[dict], scale_rows: list[dict]):
  rows = []
  if read_rows:
    worst = min(r["real tokens/s"] for r in read_rows
                if r["store"] == "local" and r["worker_count"] == 0)
    rows.append({"target": ">= 1M real tokens/s a process, local", "measured": f"{worst:,.0f}",
                 "verdict": "met" if worst >= 1e6 else "not met"})
  if scale_rows:
    low, high = scale_rows[0], scale_rows[-1]
    rows.append({"target": "first batch < 5 s at 10^7 documents",
                 "measured": f"{high['first batch s']:.2f} s at {high['documents']:,}",
                 "verdict": ("met" if high["first batch s"] < 5 else "not met")
                            if high["documents"] >= 10**7 else "not measured at 10^7"})
  # The index (12 B) and the epoch's order (4 B) per document are what a host
  # needs; 20 B leaves a quarter for the allocator. The peak adds the
  # temporaries that build the order once an epoch: reported, no target.
  for name in ("now", "peak") if len(scale_rows) > 1 else ():
    grown = high[f"{name} above baseline MiB"] - low[f"{name} above baseline MiB"]
    per_document = grown * 2**20 / (high["documents"] - low["documents"])
    rows.append({"target": ("RSS now: growth <= 20 B/document" if name == "now"
                            else "RSS peak growth (transient)"),
                 "measured": f"{per_document:.1f} B/document",
                 "verdict": ("met" if per_document <= 20 else "not met") if name == "now"
                            else "-"})
  if rows:
    print("\n### targets\n")
    print(table(rows))


def main(argv):
  del argv
  if _CHILD.value:
    return child(json.loads(_CHILD.value))
  if bad := set(_PARTS.value) - {"prepare", "read", "scale"}:
    raise ValueError(f"--parts has {sorted(bad)}; valid: prepare, read, scale.")
  for name, value in QUICK.items() if _QUICK.value else ():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value
  logging.set_verbosity(logging.WARNING)
  work = _WORK_DIR.value or tempfile.mkdtemp(prefix="pipeline_bench_")
  os.makedirs(work, exist_ok=True)
  start, read_rows, scale_rows = time.perf_counter(), [], []
  try:
    if "prepare" in _PARTS.value:
      prepare_part(work)
    if "read" in _PARTS.value:
      read_rows = read_part(work)
    if "scale" in _PARTS.value:
      scale_rows = scale_part(work)
    verdicts(read_rows, scale_rows)
  finally:
    if not _WORK_DIR.value:
      shutil.rmtree(work, ignore_errors=True)
  print(f"\ntotal {time.perf_counter() - start:.0f} s, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end (other processes skew every number)")


if __name__ == "__main__":
  app.run(main)
