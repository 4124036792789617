"""Timing the trainer's step on this host, shared by the benchmarks.

`step_config` is the trainer `Config` of a timed step; `trainer.program.build_program`
makes of it the program `python -m trainer.train` runs (the donating
`TrainStep`: value_and_grad of the loss under an all-ones loss mask, the
optimizer of trainer/optimizer.py, the loss and gradient-norm metrics), and
`time_program` reports its compile and median step time. `reference_step` is
the same step for a model the trainer does not build (recurrentgemma), and
`matmul_gflops` the f32 matmul rate the tables compare against.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from model.config import ModelConfig
from sharding import rules
from trainer import config as config_lib
from trainer.config import Config
from trainer.optimizer import NO_DECAY, learning_rate_schedule
from trainer.program import Program, build_program
from trainer.train_step import device_batch


def step_config(model: ModelConfig, batch: int, seq_len: int, overrides: dict | None = None
                ) -> Config:
  """`trainer.config.defaults()` with `model`, a (batch, seq_len) batch and
  {"section.field": value} `overrides`: the optimizer, run and mesh sections
  stay the trainer's defaults."""
  values = config_lib.defaults()
  values.model = config_lib.model_config_dict(model)
  return config_lib.build(config_lib.with_overrides(values, {
      "data.global_batch_size": batch, "data.seq_len": seq_len, **(overrides or {})}))


def one_device_program(config: Config) -> Program:
  """`build_program` on this host's first device (benchmarks time one chip)."""
  return build_program(config, jax.devices()[:1])


def _median_steps(step, state, batch: tuple, steps: int):
  """(median seconds of `steps` timed calls after one warmup, the warmup's loss)."""
  state, metrics = jax.block_until_ready(step(state, *batch))
  loss, times = float(metrics["loss"]), []
  for _ in range(steps):
    start = time.perf_counter()
    state, _ = jax.block_until_ready(step(state, *batch))
    times.append(time.perf_counter() - start)
  return statistics.median(times), loss


def time_program(program: Program, state, tokens_BT, segment_pos_BT, steps: int):
  """(compile seconds, median step seconds, first-step loss) of the program's
  train step on (B, T) int32 tokens and segment positions; `state` is donated."""
  batch = device_batch(rules.batch_sharding(program.mesh),
                       {"tokens": np.asarray(tokens_BT), "segment_pos": np.asarray(segment_pos_BT)})
  start = time.perf_counter()
  program.train_step.compile_now(state, batch[0].shape)
  compile_s = time.perf_counter() - start
  return (compile_s, *_median_steps(program.train_step, state, batch, steps))


def reference_optimizer(config: Config) -> optax.GradientTransformation:
  """trainer/optimizer.py's optimizer for a plain dict of parameters (not an
  nnx.State): the same clipping, schedule and AdamW, weight decay spared by
  the same leaf names."""
  opt = config.optimizer

  def decay(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key not in NO_DECAY, params)

  clip = optax.clip_by_global_norm(opt.grad_clip_norm) if opt.grad_clip_norm else optax.identity()
  return optax.chain(clip, optax.adamw(learning_rate_schedule(opt, config.run.steps), opt.b1,
                                       opt.b2, opt.eps, weight_decay=opt.weight_decay,
                                       mask=decay))


def time_reference(loss_fn, params, config: Config, tokens_BT, segment_pos_BT, steps: int):
  """`time_program` for a model the trainer does not build: one jit of
  value_and_grad of loss_fn(params, tokens, segment_pos, loss_mask) and the
  `reference_optimizer` update, (params, opt_state) donated, the same metrics."""
  optimizer = reference_optimizer(config)

  def step(state, *batch_BT):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch_BT)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return ((optax.apply_updates(params, updates), opt_state),
            {"loss": loss, "grad_norm": optax.tree.norm(grads)})

  params = jax.tree.map(jnp.copy, params)  # donated: the other system may share buffers
  state = (params, optimizer.init(params))
  batch = (tokens_BT, segment_pos_BT, jnp.ones_like(tokens_BT))
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(state, *batch).compile()
  compile_s = time.perf_counter() - start
  return (compile_s, *_median_steps(compiled, state, batch, steps))


def median_call_seconds(fn, *args, repeats: int) -> float:
  """Median wall time of fn(*args) over `repeats` calls, after one warmup."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  x_NN = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
  matmul = jax.jit(lambda a, b: a @ b)
  return 2 * n**3 / median_call_seconds(matmul, x_NN, x_NN, repeats=repeats) / 1e9
