"""The training objective."""

import jax
import jax.numpy as jnp


def next_token_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss: float = 0.0):
  """(sum, count) of the cross-entropy of token t+1 given tokens <= t, over
  targets inside the same document (a target whose segment_pos is 0 starts a
  new document, or is padding, and is not predicted). Optional z-loss:
  z_loss * log(Z)^2 per counted target."""
  logits_BTV = logits_BTV[:, :-1].astype(jnp.float32)
  log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
  nll_BT = log_z_BT - target_logit_BT + z_loss * jnp.square(log_z_BT)
  same_doc_BT = segment_pos_BT[:, 1:] != 0
  return jnp.sum(jnp.where(same_doc_BT, nll_BT, 0.0)), jnp.sum(same_doc_BT)


def next_token_loss(logits_BTV, tokens_BT, segment_pos_BT, z_loss: float = 0.0):
  """The mean of `next_token_nll` over counted targets."""
  total, count = next_token_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss)
  return total / jnp.maximum(count, 1)
