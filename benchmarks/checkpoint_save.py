"""How long the train loop blocks per async Orbax save, against the step time.

Command, from the repository root (about 2.5 minutes on a shared 2-core CPU):
  python -m benchmarks.checkpoint_save --preset=griffin-100m --seq_len=128 \
      --batch=8 --saves=3

The real train state (f32 params + AdamW moments, `plan_state`/`init_state` on
a 1-device CPU mesh) is stepped with `TrainStep` on random tokens
(segment_pos = arange). step s = median of the timed steps after 1 warmup.
Each of --saves async saves (`Checkpointer`, CheckpointConfig defaults,
async_save=True) is timed twice: "blocking" = how long `save()` holds the
caller, "commit" = from the call until `wait()` returns (nothing overlaps);
one train step runs between saves. Then one more async save is followed at once
by a train step, timed while the save is still writing ("step s, save in
flight"), and one synchronous save (async_save=False) in a fresh workdir.
data_iterator=None; config_json is a small dict.
"""

import argparse
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

from model import presets
from sharding import rules
from sharding.config import MeshConfig
from sharding.mesh import make_mesh
from trainer.checkpoint import Checkpointer
from trainer.config import CheckpointConfig, OptimizerConfig
from trainer.optimizer import make_optimizer
from trainer.state import init_state, plan_state
from trainer.train_step import TrainStep

jax.config.update("jax_platforms", "cpu")  # the local CPU device (no TPU probing)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="griffin-100m", help="model.presets name")
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=3, help="timed steps (after 1 warmup)")
  parser.add_argument("--saves", type=int, default=3, help="timed async saves")
  parser.add_argument("--workdir", default="", help="default: a temp dir, removed after")
  return parser.parse_args(argv)


def timed(fn, *args):
  start = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - start


def main(argv=None):
  args = parse_args(argv)
  workdir = args.workdir or tempfile.mkdtemp(prefix="ckpt_bench_")
  mesh = make_mesh(MeshConfig(ici_data=1), jax.devices()[:1])
  model_config = presets.get(args.preset)
  optimizer = make_optimizer(OptimizerConfig(), total_steps=1000)
  setup = plan_state(model_config, optimizer, mesh)
  state = init_state(model_config, optimizer, setup, seed=0)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

  row = rules.batch_sharding(mesh)
  tokens = jax.device_put(jax.random.randint(
      jax.random.key(1), (args.batch, args.seq_len), 0, model_config.vocab_size, jnp.int32), row)
  pos = jax.device_put(jnp.broadcast_to(jnp.arange(args.seq_len, dtype=jnp.int32),
                                        (args.batch, args.seq_len)), row)
  train_step = TrainStep(setup, optimizer, mesh)

  def step(state):
    return jax.block_until_ready(train_step(state, tokens, pos)[0])

  state, compile_s = timed(step, state)
  step_times = []
  for _ in range(args.steps):
    state, seconds = timed(step, state)
    step_times.append(seconds)
  step_s = statistics.median(step_times)

  config_json = {"benchmark": "checkpoint_save", "preset": args.preset}
  checkpointer = Checkpointer(workdir, CheckpointConfig(async_save=True))
  blocking, commit = [], []
  for _ in range(args.saves):
    step_number = int(state.step)
    start = time.perf_counter()
    checkpointer.save(step_number, state, None, config_json)
    blocking.append(time.perf_counter() - start)
    checkpointer.wait()
    commit.append(time.perf_counter() - start)
    state = step(state)
  checkpointer.save(int(state.step), state, None, config_json)
  state, overlap_step_s = timed(step, state)
  checkpointer.close()

  sync = Checkpointer(workdir + "/sync", CheckpointConfig(async_save=False))
  _, sync_s = timed(sync.save, int(state.step), state, None, config_json)
  sync.close()
  if not args.workdir:
    shutil.rmtree(workdir, ignore_errors=True)

  print(f"\n{args.preset}, B {args.batch} x T {args.seq_len}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}; compile+first step {compile_s:.1f} s; "
        f"steps {[round(t, 2) for t in step_times]}; blocking "
        f"{[round(t, 2) for t in blocking]}; commit {[round(t, 2) for t in commit]}\n")
  print("| parameters | state GB | step s | async save blocking s (median / max) "
        "| commit s (median) | step s, save in flight | sync save s "
        "| blocking % of a step (median / max) |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|")
  print(f"| {n_params / 1e6:.1f}M | {state_bytes / 1e9:.2f} | {step_s:.2f} "
        f"| {statistics.median(blocking):.2f} / {max(blocking):.2f} "
        f"| {statistics.median(commit):.2f} | {overlap_step_s:.2f} | {sync_s:.2f} "
        f"| {100 * statistics.median(blocking) / step_s:.1f} / "
        f"{100 * max(blocking) / step_s:.1f} |")


if __name__ == "__main__":
  main()
