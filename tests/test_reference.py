"""Agreement with the official recurrentgemma code, weights imported from it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import recurrentgemma.jax as rg
from flax import nnx

from model.config import ScanImpl
from model.convert import config_from_recurrentgemma, load_recurrentgemma_params
from model.griffin import Griffin
from tests.jit_utils import jit_forward

R, A = rg.TemporalBlockType.RECURRENT, rg.TemporalBlockType.ATTENTION
B, T = 2, 24

CASES = {
    # Griffin with a leftover layer, a window shorter than the row, the
    # RecurrentGemma embedding scale and logit soft-cap, E != D.
    "griffin": dict(width=64, mlp_expanded_width=192, num_heads=2, lru_width=96,
                    block_types=(R, R, A, R), embeddings_scale_by_sqrt_dim=True,
                    attention_window_size=5, logits_soft_cap=30.0),
    "hawk": dict(width=64, mlp_expanded_width=192, num_heads=4, lru_width=64,
                 block_types=(R, R), embeddings_scale_by_sqrt_dim=False,
                 attention_window_size=8, logits_soft_cap=0.0),
    # The window covers the row, so recurrentgemma's local attention is global.
    "mqa": dict(width=64, mlp_expanded_width=192, num_heads=2, lru_width=64,
                block_types=(A, A, A), embeddings_scale_by_sqrt_dim=False,
                attention_window_size=T, logits_soft_cap=0.0),
}


def packed_segment_pos():
  """Row 0: documents of 10, 9 and 5 tokens; row 1: one document."""
  row0 = np.concatenate([np.arange(10), np.arange(9), np.arange(5)])
  return jnp.asarray(np.stack([row0, np.arange(T)]), jnp.int32)


@pytest.fixture(scope="module", params=sorted(CASES))
def reference(request):
  """(name, rg config, rg params, inputs, rg logits) for one case."""
  rg_config = rg.GriffinConfig(vocab_size=128, scan_type=rg.ScanType.ASSOCIATIVE_NATIVE,
                               **CASES[request.param])
  rg_model = rg.Griffin(rg_config, gradient_checkpointing=False)
  tokens_BT = jax.random.randint(jax.random.key(1), (B, T), 0, 128)
  segment_pos_BT = packed_segment_pos()
  with jax.numpy_rank_promotion("allow"):  # the oracle broadcasts implicitly
    params = jax.jit(rg_model.init)(jax.random.key(0), tokens_BT, segment_pos_BT)["params"]
    apply = jax.jit(lambda p, t, s: rg_model.apply({"params": p}, t, s, return_cache=False)[0])
    logits_BTV = apply(params, tokens_BT, segment_pos_BT)
  return request.param, rg_config, params, (tokens_BT, segment_pos_BT), logits_BTV


@pytest.mark.parametrize("scan_impl", list(ScanImpl))
def test_logits_equal_recurrentgemma(reference, scan_impl):
  name, rg_config, params, inputs, expected_BTV = reference
  config = config_from_recurrentgemma(rg_config, scan_impl=scan_impl)
  if name == "mqa":
    config = dataclasses.replace(config, attention_window=None)  # truly global
  model = Griffin(config, nnx.Rngs(0))
  load_recurrentgemma_params(model, params)
  logits_BTV = jit_forward(model)(*inputs)
  assert np.abs(np.asarray(expected_BTV)).max() > 1.0  # not a trivial model
  np.testing.assert_allclose(logits_BTV, expected_BTV, atol=1e-5, rtol=0)


def test_import_rejects_wrong_shape(reference):
  _, rg_config, params, _, _ = reference
  config = config_from_recurrentgemma(rg_config)
  wrong = dataclasses.replace(config, vocab_size=config.vocab_size * 2)
  with pytest.raises(ValueError, match="embedder"):
    load_recurrentgemma_params(Griffin(wrong, nnx.Rngs(0)), params)
