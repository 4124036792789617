"""Training throughput at 2K, 4K and 8K tokens per sequence with the tokens per
batch fixed: Griffin and Hawk against the MQA baseline (the paper's §4.3
experiment, at CPU scale).

Command, from the repository root (progress goes to stderr):
  python -m benchmarks.sequence_length --seq_lens=2048,4096,8192 \\
      --batch_tokens=8192 --steps=2

Each row is the trainer's training step (`trainer.program.build_program` of
the trainer's default Config with the model below, on one device, timed by
benchmarks/timing.py: value_and_grad of the mean next-token cross-entropy
under an all-ones loss mask, then trainer/optimizer.py's clipped AdamW with
its schedule and decay mask, loss and gradient-norm metrics) on random tokens
with one document per row, f32, remat off, the trainer's initialisation
(run.seed 0). docs/performance.md says which tables timed an older, plainer
step. The three families have the same width, depth and MLP; they differ in
the temporal blocks:
  griffin  (R, R, A), local attention with --window keys
  hawk     recurrent blocks only
  mqa      global multi-query attention only (RoPE), the paper's baseline
Width 256, depth 6, head_dim 128, vocabulary 8192, scan --scan. The paper's
finding at 2K-8K (TPU, 1B-scale): MQA's step time grows with the sequence
length at fixed batch tokens, while Griffin's and Hawk's stay nearly flat.
"""

import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks.timing import matmul_gflops, one_device_program, step_config, time_program
from model import flops
from model.config import BlockType, ModelConfig, Remat, ScanImpl

_SEQ_LENS = flags.DEFINE_list("seq_lens", ["2048", "4096", "8192"], "Tokens per sequence.")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", 8192, "Tokens per batch, every row.")
_FAMILIES = flags.DEFINE_list("families", ["griffin", "hawk", "mqa"], "griffin, hawk, mqa.")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps per row (after 1 warmup).")
_WINDOW = flags.DEFINE_integer("window", 1024, "Griffin's local attention window.")
_SCAN = flags.DEFINE_enum("scan", "linear", ["linear", "associative"], "RG-LRU scan.")

R, A = BlockType.RECURRENT, BlockType.ATTENTION
PATTERNS = {"griffin": (R, R, A), "hawk": (R,), "mqa": (A,)}


def model_config(family: str) -> ModelConfig:
  return ModelConfig(
      vocab_size=8192, width=256, depth=6, lru_width=256, head_dim=128, mlp_expansion=3,
      gate_blocks=2, block_pattern=PATTERNS[family],
      attention_window=_WINDOW.value if family == "griffin" else None,
      scan_impl=ScanImpl(_SCAN.value), remat=Remat.NONE, compute_dtype="float32")


def time_row(family: str, batch: int, seq_len: int):
  """(compile s, step s, first loss) of the trainer's step for one row."""
  config = step_config(model_config(family), batch, seq_len)
  program = one_device_program(config)
  tokens_BT = jax.random.randint(jax.random.key(1), (batch, seq_len), 0,
                                 config.model.vocab_size, jnp.int32)
  pos_BT = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
  return time_program(program, program.init_state(config), tokens_BT, pos_BT, _STEPS.value)


def check_flags() -> list[int]:
  seq_lens = [int(s) for s in _SEQ_LENS.value]
  for seq_len in seq_lens:
    if seq_len < 2 or _BATCH_TOKENS.value % seq_len:
      raise ValueError(f"--seq_lens has {seq_len}: every length must divide "
                       f"--batch_tokens={_BATCH_TOKENS.value} (the batch is its quotient).")
  unknown = [f for f in _FAMILIES.value if f not in PATTERNS]
  if unknown:
    raise ValueError(f"--families has {unknown}; valid: {sorted(PATTERNS)}.")
  return seq_lens


def main(argv):
  del argv
  seq_lens = check_flags()
  start = time.perf_counter()
  matmul_rate = matmul_gflops()
  rows = []
  for family in _FAMILIES.value:
    for seq_len in seq_lens:
      batch = _BATCH_TOKENS.value // seq_len
      compile_s, step_s, loss = time_row(family, batch, seq_len)
      gflops = flops.train_flops(model_config(family), batch, seq_len) / step_s / 1e9
      rows.append((family, seq_len, batch, compile_s, step_s, gflops, loss))
      print(f"done {family} T={seq_len}: step {step_s:.2f}s", file=sys.stderr, flush=True)
  base = {(r[0], r[1]): r[4] for r in rows}
  print(f"\nwidth 256, depth 6, {_BATCH_TOKENS.value} tokens per batch, scan {_SCAN.value}, "
        f"Griffin window {_WINDOW.value}; f32 matmul {matmul_rate:.1f} GFLOP/s; "
        f"jax {jax.__version__}, total {time.perf_counter() - start:.0f} s\n")
  print("| family | seq len | batch | compile s | step s | tokens/s | model GFLOP/s "
        "| % matmul | step / step at shortest | MQA step / this |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for family, seq_len, batch, compile_s, step_s, gflops, _ in rows:
    mqa = base.get(("mqa", seq_len))
    print(f"| {family} | {seq_len} | {batch} | {compile_s:.1f} | {step_s:.3f} "
          f"| {batch * seq_len / step_s:.0f} | {gflops:.1f} | {100 * gflops / matmul_rate:.1f} "
          f"| {step_s / base[(family, seq_lens[0])]:.2f} "
          f"| {f'{mqa / step_s:.2f}' if mqa else '-'} |")


if __name__ == "__main__":
  app.run(main)
