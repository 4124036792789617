"""Training step speed: this project's Griffin vs recurrentgemma 1.0.1.

Command, from the repository root (all rows: about 15 minutes on a shared 2-core
CPU, ~200 s of it compiling recurrentgemma's linear scan; progress goes to stderr):
  python -m benchmarks.train_step --configs=A,B --steps=3 \
      --scans=linear,associative --systems=ours,recurrentgemma --remat=full

Both systems run the trainer's training step on the same weights
(recurrentgemma's init, loaded into ours) and inputs. Ours is exactly the step
`python -m trainer.train` runs: `trainer.program.build_program` of the
trainer's default Config with the model and batch below, on one device
(the donating `TrainStep`: value_and_grad w.r.t. all parameters of the
trainer's loss, trainer/loss.py, the mean next-token cross-entropy over
targets inside a document under an all-ones loss mask; a document's first
token is not predicted; then trainer/optimizer.py's update, clipping, AdamW
with warmup and cosine decay, a decay mask; loss and gradient-norm metrics).
recurrentgemma's is the same computation in one jax.jit
(benchmarks/timing.py `time_reference`: the same loss, mask and optimizer
settings, parameters and moments donated). f32 params and compute.
docs/performance.md says which tables timed an older, plainer step.
--remat=full: ours Remat.FULL, recurrentgemma gradient_checkpointing=True;
--remat=none: neither recomputes (the faster choice on a CPU, where memory is
not the limit). Inputs: random tokens (B, T) int32 and a packed layout, 2
documents of T/2 tokens per row (segment_pos = arange(T) % (T/2)). Griffin
pattern (R, R, A), lru_width = width, head_dim 128 (N = width/128 heads),
gate_blocks = N (recurrentgemma's block count), mlp expansion 3, attention
window = min(1024, T).
  A: width 256, depth 6, vocab 8192, T 512, B 8.
  B: width 512, depth 6, vocab 8192, T 1024, B 4.
Scans: "linear" is ours ScanImpl.LINEAR vs ScanType.LINEAR_NATIVE;
"associative" is ours ScanImpl.ASSOCIATIVE vs ScanType.ASSOCIATIVE_NATIVE.

compile s = wall time of lowering and compiling the step; step time = the
median of --steps timed runs after one warmup; tokens/s = B*T / step time.
Model GFLOP/s divides model/flops.py's `train_flops` (the MFU convention:
matmul weights, attention over the visible keys, the RG-LRU and Conv1D
element-wise work; remat recompute not counted) of the batch's 2B documents
of T/2 tokens (each row holds two) by the step time. "% matmul" divides by
the GFLOP/s of a jitted f32 2048x2048 @ 2048x2048 matmul (median of 5)
measured in the run.
"""

import sys
import time

import jax
import jax.numpy as jnp
import recurrentgemma.jax as rg
from absl import app, flags
from flax import nnx

from benchmarks import shapes
from benchmarks.shapes import SHAPES, Shape, inputs
from benchmarks.timing import (matmul_gflops, one_device_program, step_config, time_program,
                               time_reference)
from model import flops
from model.config import BlockType, ModelConfig, Remat, ScanImpl
from model.convert import load_recurrentgemma_params, recurrentgemma_config_fields
from model.griffin import Griffin
from trainer.config import Config
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


def train_config(shape: Shape, scan: str) -> Config:
  model = shapes.model_config(shape, OUR_SCANS[scan], Remat(_REMAT.value))
  return step_config(model, shape.batch, shape.seq)


def rg_model(config: ModelConfig, scan: str):
  rg_types = {R: rg.TemporalBlockType.RECURRENT, A: rg.TemporalBlockType.ATTENTION}
  rg_config = rg.GriffinConfig(
      **recurrentgemma_config_fields(config),
      block_types=tuple(rg_types[t] for t in config.block_types),
      scan_type=RG_SCANS[scan])
  return rg.Griffin(rg_config, gradient_checkpointing=_REMAT.value == "full", dtype=None,
                    param_dtype=jnp.float32)


def timers(config: Config, scan: str, tokens_BT, pos_BT) -> dict:
  """{system: steps -> (compile s, step s, first loss)}, both on recurrentgemma's init."""
  theirs = rg_model(config.model, scan)
  rg_params = theirs.init(jax.random.key(0), tokens_BT, pos_BT)["params"]

  def rg_loss(params, tokens_BT, pos_BT, loss_mask_BT):
    logits_BTV, _ = theirs.apply({"params": params}, tokens_BT, pos_BT, return_cache=False)
    return next_token_loss(logits_BTV, tokens_BT, pos_BT, config.optimizer.z_loss,
                           loss_mask_BT)

  def ours(steps):
    model = Griffin(config.model, nnx.Rngs(0))
    load_recurrentgemma_params(model, rg_params)
    program = one_device_program(config)
    # Copied: the step donates its state, and the loaded arrays may be rg_params'.
    params = jax.device_put(jax.tree.map(jnp.copy, nnx.state(model)),
                            program.setup.shardings.params)
    state = program.init_state(config)._replace(params=params)
    return time_program(program, state, tokens_BT, pos_BT, steps)

  return {"ours": ours, "recurrentgemma": lambda steps: time_reference(
      rg_loss, rg_params, config, tokens_BT, pos_BT, steps)}


def run_rows(matmul_rate: float) -> list[dict]:
  rows = []
  for name in _CONFIGS.value:
    shape = SHAPES[name]
    tokens_BT, pos_BT = inputs(shape)
    for scan in _SCANS.value:
      config = train_config(shape, scan)
      # Each row holds two documents of T/2 tokens: 2B documents for model/flops.py.
      model_flops = flops.train_flops(config.model, 2 * shape.batch, shape.seq // 2)
      timer = timers(config, scan, tokens_BT, pos_BT)
      for system in _SYSTEMS.value:
        compile_s, step_s, loss = timer[system](_STEPS.value)
        gflops = model_flops / step_s / 1e9
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
