"""The token-store data path: prepare (Beam build), read (local and gs://), scale.

Commands, from the repository root (full run: about 4 minutes on a shared 2-core
CPU, ~1 GB of disk under $TMPDIR for the 10^7-document store; logs to stderr):
  python -m benchmarks.pipeline
  python -m benchmarks.pipeline --quick               # smoke run, about 1 minute
  python -m benchmarks.pipeline --parts=scale --scale_docs=100000,1000000

This module is the entry point and the prepare part; the read and scale parts
and their one-measurement child processes are benchmarks/pipeline_read.py.

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
on a local GCS emulator (tests/gcs_emulator.py GcsEmulator, loopback; one Python
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
import os
import random
import shutil
import sys
import tempfile
import time

from absl import app, flags, logging

from benchmarks.pipeline_read import Sizes, read_part, scale_part, table

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

QUICK = dict(prepare_docs=2000, read_docs=20_000, seconds=3.0, scale_docs=["10000", "100000"],
             scale_batches=10)


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
  if bad := set(_PARTS.value) - {"prepare", "read", "scale"}:
    raise ValueError(f"--parts has {sorted(bad)}; valid: prepare, read, scale.")
  for name, value in QUICK.items() if _QUICK.value else ():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value
  logging.set_verbosity(logging.WARNING)
  sizes = Sizes(vocab_size=_VOCAB.value, seq_len=_SEQ_LEN.value, batch=_BATCH.value,
                seconds=_SECONDS.value, read_docs=_READ_DOCS.value,
                client_reads=300 if _QUICK.value else 2000,
                scale_docs=tuple(map(int, _SCALE_DOCS.value)),
                scale_batches=_SCALE_BATCHES.value)
  work = _WORK_DIR.value or tempfile.mkdtemp(prefix="pipeline_bench_")
  os.makedirs(work, exist_ok=True)
  start, read_rows, scale_rows = time.perf_counter(), [], []
  try:
    if "prepare" in _PARTS.value:
      prepare_part(work)
    if "read" in _PARTS.value:
      read_rows = read_part(work, sizes)
    if "scale" in _PARTS.value:
      scale_rows = scale_part(work, sizes)
    verdicts(read_rows, scale_rows)
  finally:
    if not _WORK_DIR.value:
      shutil.rmtree(work, ignore_errors=True)
  print(f"\ntotal {time.perf_counter() - start:.0f} s, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end (other processes skew every number)")


if __name__ == "__main__":
  app.run(main)
