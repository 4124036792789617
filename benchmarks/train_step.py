"""Training step speed: this project's Griffin vs recurrentgemma 1.0.1.

Command, from the repository root (all rows: about 15 minutes on a shared 2-core
CPU, ~200 s of it compiling recurrentgemma's linear scan; progress goes to stderr):
  python -m benchmarks.train_step --configs=A,B --steps=3 \
      --scans=linear,associative --systems=ours,recurrentgemma --remat=full

Both systems run the same training step on the same weights (recurrentgemma's
init, loaded into ours): one jax.jit of value_and_grad (w.r.t. all parameters)
of the trainer's loss (trainer/loss.py: the mean next-token cross-entropy over
targets inside a document; a document's first token is not predicted),
followed by the same optax AdamW update (parameters and moments donated), f32
params and compute. --remat=full: ours
Remat.FULL, recurrentgemma gradient_checkpointing=True; --remat=none: neither
recomputes (the faster choice on a CPU, where memory is not the limit). Inputs: random tokens
(B, T) int32 and a packed layout, 2 documents of T/2 tokens per row
(segment_pos = arange(T) % (T/2)). Griffin pattern (R, R, A), lru_width =
width, head_dim 128 (N = width/128 heads), gate_blocks = N (recurrentgemma's
block count), mlp expansion 3, attention window = min(1024, T).
  A: width 256, depth 6, vocab 8192, T 512, B 8.
  B: width 512, depth 6, vocab 8192, T 1024, B 4.
Scans: "linear" is ours ScanImpl.LINEAR vs ScanType.LINEAR_NATIVE;
"associative" is ours ScanImpl.ASSOCIATIVE vs ScanType.ASSOCIATIVE_NATIVE.

compile s = wall time of jax.jit(step).lower(...).compile(); step time = the
median of --steps timed runs after one warmup; tokens/s = B*T / step time.
Model GFLOP/s uses analytic model FLOPs (remat recompute not counted):
  FLOPs = 6 * P * B*T + 12 * n_attn * B*T * K * D,
P = all parameters (the embedding counts once, for the tied output matmul),
n_attn = attention layers, D = width, K = mean keys visible per query
(mean of min(segment_pos, window) + 1). "% matmul" divides by the GFLOP/s of
a jitted f32 2048x2048 @ 2048x2048 matmul (median of 5) measured in the run.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import recurrentgemma.jax as rg
from absl import app, flags
from flax import nnx

from benchmarks import shapes
from benchmarks.shapes import SHAPES, Shape, inputs
from benchmarks.timing import matmul_gflops, time_step
from model.config import BlockType, ModelConfig, Remat, ScanImpl
from model.convert import load_recurrentgemma_params, recurrentgemma_config_fields
from model.griffin import Griffin
from trainer.loss import next_token_loss

_CONFIGS = flags.DEFINE_list("configs", ["A", "B"], "Shapes to run: A, B.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per row (after 1 warmup).")
_SCANS = flags.DEFINE_list("scans", ["linear", "associative"], "linear, associative.")
_SYSTEMS = flags.DEFINE_list("systems", ["ours", "recurrentgemma"], "ours, recurrentgemma.")
_REMAT = flags.DEFINE_enum("remat", "full", ["full", "none"],
                           "Recompute the forward pass in the backward (both systems) or not.")


OUR_SCANS = {"linear": ScanImpl.LINEAR, "associative": ScanImpl.ASSOCIATIVE}
RG_SCANS = {"linear": rg.ScanType.LINEAR_NATIVE, "associative": rg.ScanType.ASSOCIATIVE_NATIVE}
R, A = BlockType.RECURRENT, BlockType.ATTENTION


def model_config(shape: Shape, scan: str) -> ModelConfig:
  return shapes.model_config(shape, OUR_SCANS[scan], Remat(_REMAT.value))


def rg_model(config: ModelConfig, scan: str):
  rg_types = {R: rg.TemporalBlockType.RECURRENT, A: rg.TemporalBlockType.ATTENTION}
  rg_config = rg.GriffinConfig(
      **recurrentgemma_config_fields(config),
      block_types=tuple(rg_types[t] for t in config.block_types),
      scan_type=RG_SCANS[scan])
  return rg.Griffin(rg_config, gradient_checkpointing=_REMAT.value == "full", dtype=None,
                    param_dtype=jnp.float32)


def loss_fns(config: ModelConfig, scan: str, tokens_BT, pos_BT):
  """{system: (loss(params, tokens, pos), params)}, both on recurrentgemma's init."""
  theirs = rg_model(config, scan)
  rg_params = theirs.init(jax.random.key(0), tokens_BT, pos_BT)["params"]

  def rg_loss(params, tokens_BT, pos_BT):
    logits_BTV, _ = theirs.apply({"params": params}, tokens_BT, pos_BT, return_cache=False)
    return next_token_loss(logits_BTV, tokens_BT, pos_BT)

  ours = Griffin(config, nnx.Rngs(0))
  load_recurrentgemma_params(ours, rg_params)
  graphdef, our_params, rest = nnx.split(ours, nnx.Param, ...)

  def our_loss(params, tokens_BT, pos_BT):
    logits_BTV, _ = nnx.merge(graphdef, params, rest)(tokens_BT, pos_BT)
    return next_token_loss(logits_BTV, tokens_BT, pos_BT)

  return {"ours": (our_loss, our_params), "recurrentgemma": (rg_loss, rg_params)}


def model_flops(config: ModelConfig, params, pos_BT) -> float:
  n_params = sum(x.size for x in jax.tree.leaves(params))
  keys_mean = float(np.mean(np.minimum(np.asarray(pos_BT), config.attention_window) + 1))
  n_attn = sum(t is A for t in config.block_types)
  tokens = pos_BT.size
  return 6 * n_params * tokens + 12 * n_attn * tokens * keys_mean * config.width


def run_rows(matmul_rate: float) -> list[dict]:
  rows = []
  for name in _CONFIGS.value:
    shape = SHAPES[name]
    tokens_BT, pos_BT = inputs(shape)
    for scan in _SCANS.value:
      config = model_config(shape, scan)
      fns = loss_fns(config, scan, tokens_BT, pos_BT)
      for system in _SYSTEMS.value:
        loss_fn, params = fns[system]
        compile_s, step_s, loss = time_step(loss_fn, params, tokens_BT, pos_BT, _STEPS.value)
        gflops = model_flops(config, params, pos_BT) / step_s / 1e9
        rows.append(dict(system=system, config=name, scan=scan, compile_s=compile_s,
                         step_s=step_s, tok_s=tokens_BT.size / step_s, gflops=gflops,
                         frac=gflops / matmul_rate, loss=loss))
        print(f"done {system} {name} {scan}: compile {compile_s:.1f}s step {step_s:.2f}s",
              file=sys.stderr, flush=True)
  return rows


def ratio(rows, row, key) -> str:
  if row["system"] != "ours":
    return ""
  for other in rows:
    if other["system"] == "recurrentgemma" and (other["config"], other["scan"]) == (
        row["config"], row["scan"]):
      return f"{row[key] / other[key]:.2f}"
  return "-"


def table(rows, matmul_rate: float) -> str:
  lines = ["| system | config | scan | compile s | step s | tokens/s | model GFLOP/s "
           "| % matmul | loss | tokens/s ours/rg | compile ours/rg |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(
        f"| {r['system']} | {r['config']} | {r['scan']} | {r['compile_s']:.1f} "
        f"| {r['step_s']:.3f} | {r['tok_s']:.0f} | {r['gflops']:.1f} | {100 * r['frac']:.1f} "
        f"| {r['loss']:.4f} | {ratio(rows, r, 'tok_s')} | {ratio(rows, r, 'compile_s')} |")
  lines.append(f"| f32 matmul 2048^3 | | | | | | {matmul_rate:.1f} | 100.0 | | | |")
  return "\n".join(lines)


def check_flags():
  for flag, valid in ((_CONFIGS, SHAPES), (_SCANS, OUR_SCANS), (_SYSTEMS, ("ours", "recurrentgemma"))):
    for value in flag.value:
      if value not in valid:
        raise ValueError(f"--{flag.name}={value!r}; valid: {sorted(valid)}.")


def main(argv):
  del argv
  check_flags()
  start = time.perf_counter()
  matmul_rate = matmul_gflops()
  rows = run_rows(matmul_rate)
  print(f"\nremat {_REMAT.value}, jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"total {time.perf_counter() - start:.0f} s\n")
  print(table(rows, matmul_rate))


if __name__ == "__main__":
  app.run(main)
