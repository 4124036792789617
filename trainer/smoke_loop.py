"""The smoke run's loop (see trainer/smoke.py): the sharded train step on
whatever devices this process sees, fed byte-level stdlib rows."""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from model.griffin import Griffin
from pipeline.stdlib_bytes import byte_rows
from sharding import rules
from sharding.mesh import make_mesh
from trainer.config import Config
from trainer.loss import next_token_loss
from trainer.optimizer import make_optimizer
from trainer.state import init_state, plan_state
from trainer.train_step import TrainStep


def run(config: Config) -> dict:
  """Trains `config.run.steps` steps; returns the measured numbers."""
  if config.model.vocab_size < 256:
    raise ValueError(f"model.vocab_size={config.model.vocab_size}: the smoke run "
                     "reads bytes and needs >= 256.")
  seq_len, batch = config.data.seq_len, config.data.global_batch_size
  mesh = make_mesh(config.mesh)
  rules.check_batch_divisible(batch, mesh)
  optimizer = make_optimizer(config.optimizer, config.run.steps)
  setup = plan_state(config.model, optimizer, mesh)
  state = init_state(config.model, optimizer, setup, config.run.seed)
  train_step = TrainStep(setup, optimizer, mesh, config.optimizer.z_loss)
  row = rules.batch_sharding(mesh)
  train_NT, valid_NT = byte_rows("train", seq_len), byte_rows("validation", seq_len)
  segment_pos_BT = jax.device_put(
      np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)), row)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("model: %s parameters on mesh %s; %d train rows, %d validation rows",
               f"{n_params:,}", dict(mesh.shape), len(train_NT), len(valid_NT))

  @jax.jit
  def eval_loss(params, tokens_BT):
    logits_BTV, _ = nnx.merge(setup.graphdef, params)(tokens_BT, segment_pos_BT)
    return next_token_loss(logits_BTV, tokens_BT, segment_pos_BT)

  rng = np.random.default_rng(config.run.seed)
  valid_BT = jax.device_put(valid_NT[:batch], row)
  with train_step.context():
    first_eval = float(eval_loss(state.params, valid_BT))
  start = time.time()
  for step in range(1, config.run.steps + 1):
    tokens_BT = jax.device_put(train_NT[rng.integers(0, len(train_NT), batch)], row)
    state, metrics = train_step(state, tokens_BT, segment_pos_BT)
    if step % config.run.log_every_steps == 0 or step == config.run.steps:
      logging.info("step %d  loss %.4f  grad norm %.3f  (%.1f s)", step,
                   float(metrics["loss"]), float(metrics["grad_norm"]), time.time() - start)
  with train_step.context():
    last_eval = float(eval_loss(state.params, valid_BT))
  logging.info("validation loss: %.4f at init -> %.4f after %d steps",
               first_eval, last_eval, config.run.steps)
  params = jax.device_get(state.params)
  decode_error = _decode_error(nnx.merge(setup.graphdef, params), valid_NT[:2, :16])
  logging.info("decode vs forward: max |logit difference| = %.2e", decode_error)
  if not last_eval < first_eval:
    raise RuntimeError(f"validation loss did not fall: {first_eval:.4f} -> {last_eval:.4f}")
  if decode_error > 1e-3:
    raise RuntimeError(f"cached decoding differs from the forward pass by {decode_error:.2e}")
  print(f"smoke run OK: validation loss {first_eval:.3f} -> {last_eval:.3f}, "
        f"decode error {decode_error:.1e}")
  return {"first_eval": first_eval, "last_eval": last_eval, "decode_error": decode_error}


def _decode_error(model: Griffin, tokens_BT) -> float:
  """Max |logits| difference between token-by-token decoding and one forward."""
  B, T = tokens_BT.shape
  segment_pos_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda t, p, c: nnx.merge(graphdef, state)(t, p, c, cache_length=T))
  full_BTV, _ = forward(tokens_BT, segment_pos_BT, None)
  cache = model.init_cache(B, T)
  steps = []
  for t in range(T):
    logits_B1V, cache = forward(tokens_BT[:, t:t + 1], segment_pos_BT[:, t:t + 1], cache)
    steps.append(logits_B1V)
  return float(jnp.max(jnp.abs(jnp.concatenate(steps, axis=1) - full_BTV)))
