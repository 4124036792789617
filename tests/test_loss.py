"""The training loss and the tied output layer against plain references: the
formulations chosen for speed (shifted targets, a custom VJP for the
embedding gradient) compute the same numbers and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.layers import tied_logits
from trainer.loss import next_token_loss, next_token_nll_by_position

B, T, V, D = 3, 11, 7, 5


def _case():
  """Row 0 packs documents of 4, 5 and 2 tokens; rows 1-2 are one document."""
  k_logits, k_tokens = jax.random.split(jax.random.key(0))
  logits_BTV = 3 * jax.random.normal(k_logits, (B, T, V))
  tokens_BT = jax.random.randint(k_tokens, (B, T), 0, V)
  row0 = np.concatenate([np.arange(4), np.arange(5), np.arange(2)])
  segment_pos_BT = jnp.asarray(np.stack([row0, np.arange(T), np.arange(T)]), jnp.int32)
  return logits_BTV, tokens_BT, segment_pos_BT


def _reference_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss):
  """Sliced logits, as the loss was first written: (nll, counted), (B, T-1)."""
  logits_BTV = logits_BTV[:, :-1]
  log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_BT = jnp.take_along_axis(logits_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
  return log_z_BT - target_BT + z_loss * log_z_BT**2, segment_pos_BT[:, 1:] != 0


def _reference_loss(logits_BTV, tokens_BT, segment_pos_BT, z_loss):
  nll_BT, counted_BT = _reference_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss)
  return jnp.sum(jnp.where(counted_BT, nll_BT, 0)) / jnp.sum(counted_BT)


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_loss_and_gradient_equal_the_sliced_reference(z_loss):
  logits_BTV, tokens_BT, segment_pos_BT = _case()
  loss, grad_BTV = jax.value_and_grad(next_token_loss)(logits_BTV, tokens_BT, segment_pos_BT,
                                                       z_loss)
  want, want_BTV = jax.value_and_grad(_reference_loss)(logits_BTV, tokens_BT, segment_pos_BT,
                                                       z_loss)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(grad_BTV, want_BTV, rtol=1e-5, atol=1e-7)
  # The last position predicts nothing; a document's last token predicts
  # the next document's first token, which is not counted either.
  assert not np.any(grad_BTV[:, -1])
  assert not np.any(grad_BTV[0, [3, 8]])
  # 3 documents in row 0 leave 8 targets; rows 1 and 2 have 10 each.
  np.testing.assert_allclose(loss * 28, jnp.sum(jnp.where(
      *_reference_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss)[::-1], 0)), rtol=1e-6)


def test_loss_by_position_sums_counted_targets_at_their_document_position():
  logits_BTV, tokens_BT, segment_pos_BT = _case()
  sum_T, count_T = next_token_nll_by_position(logits_BTV, tokens_BT, segment_pos_BT)
  nll_BT, counted_BT = _reference_nll(logits_BTV, tokens_BT, segment_pos_BT, 0.0)
  want_sum_T, want_count_T = np.zeros(T), np.zeros(T, np.int64)
  for b, t in zip(*np.nonzero(np.asarray(counted_BT))):
    position = int(segment_pos_BT[b, t + 1])
    want_sum_T[position] += float(nll_BT[b, t])
    want_count_T[position] += 1
  np.testing.assert_array_equal(count_T, want_count_T)
  np.testing.assert_allclose(sum_T, want_sum_T, rtol=1e-6)
  assert count_T[0] == 0 and count_T[1] == 5  # the second tokens of the 5 documents


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_tied_logits_values_and_gradients_equal_autodiff(dtype, rtol):
  k_x, k_e, k_g = jax.random.split(jax.random.key(1), 3)
  x_BTD = jax.random.normal(k_x, (B, T, D)).astype(dtype)
  e_VD = jax.random.normal(k_e, (V, D)).astype(dtype)
  g_BTV = jax.random.normal(k_g, (B, T, V))

  def plain(x_BTD, e_VD):
    return jnp.einsum("BTD,VD->BTV", x_BTD, e_VD, preferred_element_type=jnp.float32)

  got, got_vjp = jax.vjp(tied_logits, x_BTD, e_VD)
  want, want_vjp = jax.vjp(plain, x_BTD, e_VD)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, want)
  for got_grad, want_grad in zip(got_vjp(g_BTV), want_vjp(g_BTV)):
    assert got_grad.dtype == want_grad.dtype == dtype
    np.testing.assert_allclose(got_grad.astype(jnp.float32), want_grad.astype(jnp.float32),
                               rtol=rtol, atol=rtol)
