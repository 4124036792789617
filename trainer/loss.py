"""The training objective, and the same negative log-likelihood by position."""

import jax
import jax.numpy as jnp


def _masked_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss):
  """Cross-entropy of token t+1 given tokens <= t (B, T-1), and which of those
  targets count: a target whose segment_pos is 0 starts a new document, or is
  padding, and is not predicted. Optional z-loss: z_loss * log(Z)^2."""
  logits_BTV = logits_BTV[:, :-1].astype(jnp.float32)
  log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
  nll_BT = log_z_BT - target_logit_BT + z_loss * jnp.square(log_z_BT)
  return nll_BT, segment_pos_BT[:, 1:] != 0


def next_token_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss: float = 0.0):
  """(sum, count) of the next-token cross-entropy over counted targets."""
  nll_BT, counted_BT = _masked_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss)
  return jnp.sum(jnp.where(counted_BT, nll_BT, 0.0)), jnp.sum(counted_BT)


def next_token_nll_by_position(logits_BTV, tokens_BT, segment_pos_BT):
  """(sum_T, count_T): `next_token_nll` split by the target's position in its
  document (index p = the token at document position p, predicted from the p
  before it; index 0 is never counted). The paper's Fig. 5 measure."""
  nll_BT, counted_BT = _masked_nll(logits_BTV, tokens_BT, segment_pos_BT, 0.0)
  position_BT = segment_pos_BT[:, 1:]
  T = tokens_BT.shape[1]
  sum_T = jnp.zeros(T, jnp.float32).at[position_BT].add(jnp.where(counted_BT, nll_BT, 0.0))
  count_T = jnp.zeros(T, jnp.int32).at[position_BT].add(counted_BT.astype(jnp.int32))
  return sum_T, count_T


def next_token_loss(logits_BTV, tokens_BT, segment_pos_BT, z_loss: float = 0.0):
  """The mean of `next_token_nll` over counted targets."""
  total, count = next_token_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss)
  return total / jnp.maximum(count, 1)
