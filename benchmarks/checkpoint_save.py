"""How long the train loop blocks per async Orbax save, against the step time.

Command, from the repository root (about 2.5 minutes on a shared 2-core CPU):
  python -m benchmarks.checkpoint_save --preset=griffin-100m --seq_len=128 \
      --batch=8 --saves=3

The trainer's program (`trainer.program.build_program` of the trainer's
default Config with the --preset model and a --batch x --seq_len batch, on
one CPU device): its fresh state (f32 params + AdamW moments) is stepped with
its `TrainStep` (all-ones loss mask, the clipped and scheduled AdamW) on
random tokens (segment_pos = arange). step s = median of the timed steps after
1 warmup.
Each of --saves async saves (`Checkpointer`, CheckpointConfig defaults,
async_save=True) is timed twice: "blocking" = how long `save()` holds the
caller, "commit" = from the call until `wait()` returns (nothing overlaps);
one train step runs between saves. Then one more async save is followed at once
by a train step, timed while the save is still writing ("step s, save in
flight"), and one synchronous save (async_save=False) in a fresh workdir.
data_iterator=None; config_json is the run's config (`trainer.config.to_dict`).
"""

import argparse
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import one_device_program, step_config
from model import presets
from sharding import rules
from trainer import config as config_lib
from trainer.checkpoint import Checkpointer
from trainer.config import CheckpointConfig
from trainer.train_step import device_batch

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
  config = step_config(presets.get(args.preset), args.batch, args.seq_len)
  program = one_device_program(config)
  state = program.init_state(config)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

  tokens_BT = jax.random.randint(jax.random.key(1), (args.batch, args.seq_len), 0,
                                 config.model.vocab_size, jnp.int32)
  pos_BT = np.broadcast_to(np.arange(args.seq_len, dtype=np.int32), tokens_BT.shape)
  batch = device_batch(rules.batch_sharding(program.mesh),
                       {"tokens": np.asarray(tokens_BT), "segment_pos": pos_BT})

  def step(state):
    return jax.block_until_ready(program.train_step(state, *batch)[0])

  state, compile_s = timed(step, state)
  step_times = []
  for _ in range(args.steps):
    state, seconds = timed(step, state)
    step_times.append(seconds)
  step_s = statistics.median(step_times)

  config_json = config_lib.to_dict(config)
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
