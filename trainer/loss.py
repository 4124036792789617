"""The training objective, the same negative log-likelihood by position, and
next-token accuracy.

Which targets count: token t+1 is the target of position t. It counts when
its segment_pos is not 0 (a document's first token, or padding, is never
predicted) and, when a `loss_mask_BT` is given, where that mask is non-zero
at t+1 (1 where the target token counts; the synthetic tasks mark their
answers). Without a mask every in-document target counts, exactly as before
masks existed.
"""

import jax
import jax.numpy as jnp


def _next_targets(tokens_BT, segment_pos_BT, loss_mask_BT):
  """(B, T) target tokens and which count: position t predicts token t+1; the
  last position predicts nothing, so it never counts.

  The targets are shifted, not the logits: slicing the (B, T, V) logits, the
  largest array of the step, costs a copy forward and a pad of its gradient
  backward.
  """
  target_BT = jnp.roll(tokens_BT, -1, axis=1)
  counted_BT = jnp.roll(segment_pos_BT, -1, axis=1) != 0
  if loss_mask_BT is not None:
    counted_BT &= jnp.roll(loss_mask_BT, -1, axis=1) != 0
  return target_BT, counted_BT.at[:, -1].set(False)


def _masked_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss, loss_mask_BT):
  """Cross-entropy of token t+1 given tokens <= t (B, T), and which of those
  targets count. Optional z-loss: z_loss * log(Z)^2."""
  target_BT, counted_BT = _next_targets(tokens_BT, segment_pos_BT, loss_mask_BT)
  logits_BTV = logits_BTV.astype(jnp.float32)
  log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, target_BT[..., None], axis=-1)[..., 0]
  nll_BT = log_z_BT - target_logit_BT + z_loss * jnp.square(log_z_BT)
  return nll_BT, counted_BT


def next_token_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss: float = 0.0,
                   loss_mask_BT=None):
  """(sum, count) of the next-token cross-entropy over counted targets."""
  nll_BT, counted_BT = _masked_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss, loss_mask_BT)
  return jnp.sum(jnp.where(counted_BT, nll_BT, 0.0)), jnp.sum(counted_BT)


def _by_position(values_BT, counted_BT, segment_pos_BT, dtype):
  """Sums of `values_BT` over counted targets, by the target's position."""
  T = segment_pos_BT.shape[1]
  return jnp.zeros(T, dtype).at[jnp.roll(segment_pos_BT, -1, axis=1)].add(
      jnp.where(counted_BT, values_BT, 0).astype(dtype))


def next_token_nll_by_position(logits_BTV, tokens_BT, segment_pos_BT, loss_mask_BT=None):
  """(sum_T, count_T): `next_token_nll` split by the target's position in its
  document (index p = the token at document position p, predicted from the p
  before it; index 0 is never counted). The paper's Fig. 5 measure."""
  nll_BT, counted_BT = _masked_nll(logits_BTV, tokens_BT, segment_pos_BT, 0.0, loss_mask_BT)
  return (_by_position(nll_BT, counted_BT, segment_pos_BT, jnp.float32),
          _by_position(1, counted_BT, segment_pos_BT, jnp.int32))


def next_token_correct_by_position(logits_BTV, tokens_BT, segment_pos_BT, loss_mask_BT=None):
  """correct_T: counted targets that are the argmax of their prediction, by
  position as in `next_token_nll_by_position` (accuracy = correct / count)."""
  target_BT, counted_BT = _next_targets(tokens_BT, segment_pos_BT, loss_mask_BT)
  correct_BT = jnp.argmax(logits_BTV, axis=-1) == target_BT
  return _by_position(correct_BT, counted_BT, segment_pos_BT, jnp.int32)


def next_token_loss(logits_BTV, tokens_BT, segment_pos_BT, z_loss: float = 0.0,
                    loss_mask_BT=None):
  """The mean of `next_token_nll` over counted targets."""
  total, count = next_token_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss, loss_mask_BT)
  return total / jnp.maximum(count, 1)
