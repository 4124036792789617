"""lm-eval multiple-choice throughput: requests/s and compiles per evaluation
by batch size, through lm-eval's own evaluator and our adapter.

Command, from the repository root (about 4 minutes on a shared 2-core CPU):
  python -m benchmarks.lm_eval_throughput --batch_sizes=1,2,4,8,16,32,64

The model is configs/smoke.py's (the README's main job: 8k vocabulary,
training length 128, so the length buckets are 64 and 128) with random
weights: speed does not depend on them. Its tokenizer is the default
corpus's (built on first use). The task is a local HellaSwag-like
multiple-choice task written to a temporary folder: --docs passages of the
standard library, a context of a quarter to all of --context_chars and four
endings of --ending_chars (the true one and three from other passages), so
each document is four log-likelihood requests. Each batch size gets a fresh
adapter; the first evaluation compiles (cold s), then the median of
--repeats more is the warm time. The accuracy column must be the same in
every row: batching changes no score.
"""

import json
import os
import pathlib
import random
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")

from absl import app, flags  # noqa: E402

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "2", "4", "8", "16", "32", "64"],
                                 "Adapter batch sizes, one row each.")
_DOCS = flags.DEFINE_integer("docs", 128, "Documents of the task (4 requests each).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Warm evaluations per row (median).")
_CONTEXT_CHARS = flags.DEFINE_integer("context_chars", 400, "Most characters of a context.")
_ENDING_CHARS = flags.DEFINE_integer("ending_chars", 60, "Characters of each ending.")
CHOICES = 4


def write_task(folder: pathlib.Path, docs: int, context_chars: int, ending_chars: int):
  """<folder>/bench_mc.yaml over <folder>/bench_mc.jsonl."""
  from pipeline.documents import stdlib_files
  rng = random.Random(0)
  texts = [text for text in (pathlib.Path(p).read_text(errors="replace")
                             for p in stdlib_files()[0]) if len(text) > 4 * context_chars]
  passages = []
  for text in rng.sample(texts, docs):
    chars = rng.randint(context_chars // 4, context_chars)  # both length buckets
    start = rng.randrange(len(text) - chars - ending_chars)
    passages.append((text[start:start + chars],
                     text[start + chars:start + chars + ending_chars]))
  rows = []
  for i, (context, ending) in enumerate(passages):
    others = [passages[j][1] for j in rng.sample([j for j in range(docs) if j != i], 3)]
    label = rng.randrange(CHOICES)
    rows.append({"context": context, "endings": others[:label] + [ending] + others[label:],
                 "label": label})
  (folder / "bench_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (folder / "bench_mc.yaml").write_text(json.dumps({
      "task": "bench_mc", "dataset_path": "json", "test_split": "test",
      "dataset_kwargs": {"data_files": {"test": str(folder / "bench_mc.jsonl")},
                         "cache_dir": str(folder / "hf")},
      "output_type": "multiple_choice", "doc_to_text": "{{context}}",
      "doc_to_choice": "{{endings}}", "doc_to_target": "label", "target_delimiter": "",
      "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
      "metadata": {"version": 1.0}}))


def measure(lm, tasks) -> tuple[float, float]:
  """(seconds, accuracy) of one lm-eval evaluation."""
  from lm_eval import evaluator
  start = time.perf_counter()
  results = evaluator.evaluate(lm=lm, task_dict=tasks, bootstrap_iters=0, log_samples=False)
  return time.perf_counter() - start, results["results"]["bench_mc"]["acc,none"]


def main(argv):
  del argv
  batch_sizes = [int(b) for b in _BATCH_SIZES.value]
  if min(batch_sizes + [_DOCS.value - CHOICES, _REPEATS.value, _CONTEXT_CHARS.value,
                        _ENDING_CHARS.value]) < 1:
    sys.exit(f"benchmarks.lm_eval_throughput: --batch_sizes={_BATCH_SIZES.value}, "
             f"--repeats={_REPEATS.value}, --context_chars={_CONTEXT_CHARS.value} and "
             f"--ending_chars={_ENDING_CHARS.value} must be >= 1 and --docs={_DOCS.value} "
             f"> {CHOICES}")
  import jax
  from flax import nnx

  from configs import smoke
  from model.griffin import Griffin
  from trainer import config as config_lib
  from trainer.inference import data_parallel_mesh
  from trainer.lm_eval_model import GriffinLM
  from trainer.lm_eval_tasks import load_tasks, task_manager
  from trainer.train_lib import make_tokenizer

  config = config_lib.build(smoke.get_config())
  tokenizer = make_tokenizer(config)
  graphdef, params = nnx.split(Griffin(config.model, nnx.Rngs(0)))
  mesh = data_parallel_mesh()
  with tempfile.TemporaryDirectory() as folder:
    write_task(pathlib.Path(folder), _DOCS.value, _CONTEXT_CHARS.value, _ENDING_CHARS.value)
    tasks = load_tasks(task_manager(["bench_mc"], folder, False), ["bench_mc"])
    requests = _DOCS.value * CHOICES
    lines = ["| batch size | requests | compiles | cold s | warm s | requests/s | acc |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for batch_size in batch_sizes:
      lm = GriffinLM(graphdef, params, tokenizer, mesh, max_length=config.data.seq_len,
                     batch_size=batch_size)
      cold, _ = measure(lm, tasks)
      warm_runs = [measure(lm, tasks) for _ in range(_REPEATS.value)]
      warm = statistics.median(seconds for seconds, _ in warm_runs)
      accuracy = warm_runs[0][1]
      print(f"done batch {batch_size}: cold {cold:.1f}s warm {warm:.1f}s", file=sys.stderr)
      lines.append(f"| {lm.batch_size} | {requests} | {lm.compiles()} | {cold:.1f} | "
                   f"{warm:.1f} | {requests / warm:.1f} | {accuracy:.4f} |")
  print(f"{jax.devices()[0].device_kind} x{len(jax.devices())}, configs/smoke.py model "
        f"({sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f}M parameters, random), "
        f"length buckets {lm.buckets}")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
