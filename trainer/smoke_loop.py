"""The smoke run's loop (see trainer/smoke.py)."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from model.griffin import Griffin
from pipeline.stdlib_bytes import byte_rows
from trainer.config import Config


def next_token_loss(logits_BTV, tokens_BT, segment_pos_BT):
  """Mean cross-entropy of token t+1 given tokens <= t, inside one document."""
  logp_BTV = jax.nn.log_softmax(logits_BTV[:, :-1].astype(jnp.float32))
  nll_BT = -jnp.take_along_axis(logp_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
  same_doc_BT = segment_pos_BT[:, 1:] != 0
  return jnp.sum(nll_BT * same_doc_BT) / jnp.maximum(jnp.sum(same_doc_BT), 1)


def make_optimizer(config: Config) -> optax.GradientTransformation:
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, opt.learning_rate, opt.warmup_steps, opt.decay_steps or config.run.steps,
      opt.learning_rate * opt.end_lr_fraction)
  return optax.chain(
      optax.clip_by_global_norm(opt.grad_clip_norm) if opt.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, opt.b1, opt.b2, opt.eps, weight_decay=opt.weight_decay))


def run(config: Config) -> dict:
  """Trains `config.run.steps` steps; returns the measured numbers."""
  if config.model.vocab_size < 256:
    raise ValueError(f"model.vocab_size={config.model.vocab_size}: the smoke run "
                     "reads bytes and needs >= 256.")
  seq_len, batch = config.data.seq_len, config.data.global_batch_size
  train_NT, valid_NT = byte_rows("train", seq_len), byte_rows("validation", seq_len)
  segment_pos_BT = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
  model = Griffin(config.model, nnx.Rngs(config.run.seed))
  optimizer = make_optimizer(config)
  graphdef, params = nnx.split(model)
  opt_state = optimizer.init(params)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  logging.info("model: %s parameters, %d train rows, %d validation rows",
               f"{n_params:,}", len(train_NT), len(valid_NT))

  def loss_of(params, tokens_BT):
    logits_BTV, _ = nnx.merge(graphdef, params)(tokens_BT, segment_pos_BT)
    return next_token_loss(logits_BTV, tokens_BT, segment_pos_BT)

  @jax.jit
  def train_step(params, opt_state, tokens_BT):
    loss, grads = jax.value_and_grad(loss_of)(params, tokens_BT)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  eval_loss = jax.jit(loss_of)
  rng = np.random.default_rng(config.run.seed)
  valid_BT = jnp.asarray(valid_NT[:batch])
  first_eval = float(eval_loss(params, valid_BT))
  start = time.time()
  for step in range(1, config.run.steps + 1):
    tokens_BT = jnp.asarray(train_NT[rng.integers(0, len(train_NT), batch)])
    params, opt_state, loss = train_step(params, opt_state, tokens_BT)
    if step % config.run.log_every_steps == 0 or step == config.run.steps:
      logging.info("step %d  loss %.4f  (%.1f s)", step, float(loss), time.time() - start)
  last_eval = float(eval_loss(params, valid_BT))
  logging.info("validation loss: %.4f at init -> %.4f after %d steps",
               first_eval, last_eval, config.run.steps)
  decode_error = _decode_error(nnx.merge(graphdef, params), valid_BT[:, :16])
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
