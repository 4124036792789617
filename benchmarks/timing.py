"""Timing a jitted training step on this host, shared by the benchmarks:
the step (value_and_grad, then AdamW, state donated), its compile and median
step time, and the f32 matmul rate the tables compare against."""

import statistics
import time

import jax
import jax.numpy as jnp
import optax


def train_step(loss_fn):
  """jit(state, tokens, pos) -> (state, loss): value_and_grad, then AdamW."""
  optimizer = optax.adamw(1e-4, weight_decay=0.1)

  def step(state, tokens_BT, pos_BT):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens_BT, pos_BT)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return jax.jit(step, donate_argnums=0), optimizer


def time_step(loss_fn, params, tokens_BT, pos_BT, steps: int):
  """(compile seconds, median step seconds, first-step loss)."""
  step, optimizer = train_step(loss_fn)
  params = jax.tree.map(jnp.copy, params)  # donated: the other system may share buffers
  state = (params, optimizer.init(params))
  start = time.perf_counter()
  compiled = step.lower(state, tokens_BT, pos_BT).compile()
  compile_s = time.perf_counter() - start
  state, loss = jax.block_until_ready(compiled(state, tokens_BT, pos_BT))  # warmup
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, _ = jax.block_until_ready(compiled(state, tokens_BT, pos_BT))
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times), float(loss)


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
