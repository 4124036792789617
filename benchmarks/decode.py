"""Decode speed: Griffin against the MQA Transformer baseline of similar size,
generating 512 ... 4096 tokens from the decode cache, on this machine.

Command, from the repository root (about 6 minutes on a shared 2-core CPU):
  python -m benchmarks.decode --lengths=512,1024,2048,4096 --batch=8

Both models: width 512, vocab 8192, head_dim 128 (4 query heads, one K/V
head), MLP expansion 3, f32, random weights (speed does not depend on them).
Griffin: depth 6, blocks (R, R, A), lru_width 512, local attention window 1024
(the paper's), so its cache stops growing at 1024 keys. MQA: global attention,
depth 8 (about Griffin's parameter count), so its cache holds every token.
Each row: one jitted `model.sampling` call (a prefill of a 16-token prompt per
row, then N-1 single-token decode steps in a lax.scan), temperature 1.
compile s = lower + compile; decode tokens/s = B*N / (median wall time of
--repeats calls after compiling).
"""

import dataclasses
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from model.config import BlockType, ModelConfig
from model.griffin import Griffin
from model.sampling import SamplingConfig, left_pad, make_generate

_LENGTHS = flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096"], "Tokens to generate.")
_BATCH = flags.DEFINE_integer("batch", 8, "Prompts decoded together.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per row (median).")
PROMPT = 16

GRIFFIN = ModelConfig(vocab_size=8192, width=512, depth=6, lru_width=512, head_dim=128,
                      gate_blocks=4, attention_window=1024)
MQA = dataclasses.replace(GRIFFIN, block_pattern=(BlockType.ATTENTION,), depth=8,
                          attention_window=None)


def decode_row(name: str, config: ModelConfig, length: int) -> dict:
  graphdef, params = nnx.split(Griffin(config, nnx.Rngs(0)))
  generate = make_generate(graphdef, SamplingConfig(temperature=1.0, max_new_tokens=length))
  prompts = np.random.default_rng(0).integers(0, config.vocab_size, (_BATCH.value, PROMPT))
  tokens_BT, segment_pos_BT = left_pad(prompts.tolist())
  key = jax.random.key(0)
  start = time.perf_counter()
  compiled = generate.lower(params, tokens_BT, segment_pos_BT, key).compile()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, tokens_BT, segment_pos_BT, key))
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  print(f"done {name} N={length}: compile {compile_s:.1f}s, {seconds:.2f}s", file=sys.stderr)
  return {"model": name, "params": sum(x.size for x in jax.tree.leaves(params)),
          "length": length, "compile_s": compile_s,
          "tokens_per_s": _BATCH.value * length / seconds}


def table(rows: list[dict]) -> str:
  lines = ["| generated tokens | model | params | compile s | decode tokens/s | Griffin / MQA |",
           "|---:|---|---:|---:|---:|---:|"]
  speed = {(r["model"], r["length"]): r["tokens_per_s"] for r in rows}
  for r in rows:
    ratio = (f"{speed[('Griffin', r['length'])] / speed[('MQA', r['length'])]:.2f}x"
             if r["model"] == "Griffin" else "")
    lines.append(f"| {r['length']} | {r['model']} | {r['params'] / 1e6:.1f}M | "
                 f"{r['compile_s']:.1f} | {r['tokens_per_s']:,.0f} | {ratio} |")
  return "\n".join(lines)


def main(argv):
  del argv
  lengths = [int(n) for n in _LENGTHS.value]
  if any(n < 1 for n in lengths) or _BATCH.value < 1 or _REPEATS.value < 1:
    raise ValueError(f"--lengths={_LENGTHS.value}, --batch={_BATCH.value} and "
                     f"--repeats={_REPEATS.value} must all be >= 1")
  rows = [decode_row(name, config, n) for n in lengths
          for name, config in (("Griffin", GRIFFIN), ("MQA", MQA))]
  print(f"{jax.devices()[0].device_kind}, batch {_BATCH.value}, prompt {PROMPT} tokens")
  print(table(rows))


if __name__ == "__main__":
  app.run(main)
