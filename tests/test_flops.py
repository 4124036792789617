"""Analytic FLOPs (model/flops.py): hand-computed values, the matmul weights
against the model's own parameters, and how attention scales."""

import dataclasses
import math

import pytest
from flax import nnx

from model import flops
from model.config import BlockType, ModelConfig, Remat
from model.griffin import Griffin

R, A = BlockType.RECURRENT, BlockType.ATTENTION

# D 8, E 12, F 24, H 4 (N 2), G 3, V 10, W 4, window 2, layers R R A.
TINY = ModelConfig(vocab_size=10, width=8, depth=3, lru_width=12, head_dim=4,
                   gate_blocks=3, mlp_expansion=3, conv_width=4, attention_window=2)


def test_tiny_config_by_hand():
  recurrent = 3 * 8 * 12 + 2 * 12 * 12 // 3  # x, y, out; two gates = 288 + 96
  attention = 2 * 8 * 8 + 2 * 8 * 4  # q, out; one k, one v head = 192
  mlp = 3 * 8 * 24  # gate, up, down = 576
  assert flops.matmul_params(TINY) == 2 * recurrent + attention + 3 * mlp + 10 * 8 == 2768
  # T 5, window 2: queries see 1, 2, 3, 3, 3 keys.
  assert flops.keys_per_query(5, 2) == 12 / 5
  per_token = (2 * 2768  # linear layers
               + 4 * 8 * 12 / 5  # one attention layer: 4 D K
               + 2 * (2 * 4 + 14) * 12)  # two recurrent layers: Conv1D 2W + RG-LRU 14, per E
  assert per_token == pytest.approx(6140.8)
  assert flops.forward_flops(TINY, 2, 5) == pytest.approx(2 * 5 * 6140.8)
  assert flops.train_flops(TINY, 2, 5) == pytest.approx(3 * 2 * 5 * 6140.8)


def test_matmul_params_are_the_models_matmul_weights():
  config = dataclasses.replace(TINY, depth=4)  # one scanned group and an R tail
  model = nnx.eval_shape(lambda: Griffin(config, nnx.Rngs(0)))
  matmul = 0
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = [str(p) for p in path]
    is_gate = names[-1] == "w" and "conv_1d" not in names
    if names[-1] in ("kernel", "in_proj", "q", "k", "v", "out", "up", "embedding") or is_gate:
      matmul += math.prod(variable.get_value().shape)
  assert flops.matmul_params(config) == matmul


def test_keys_per_query():
  assert flops.keys_per_query(1, None) == 1
  assert flops.keys_per_query(7, None) == 4  # (T + 1) / 2
  assert flops.keys_per_query(7, 6) == flops.keys_per_query(7, None)
  assert flops.keys_per_query(7, 100) == flops.keys_per_query(7, None)
  # T >> window: close to window + 1.
  assert flops.keys_per_query(2048, 1024) == (1024 * 1025 / 2 + 1024 * 1025) / 2048
  with pytest.raises(ValueError, match="seq_len=0"):
    flops.keys_per_query(0, None)


def _attention_flops(config, seq_len):
  """The score/value term of an attention-only config (no elementwise term)."""
  assert config.block_pattern == (A,)
  return flops.train_flops(config, 1, seq_len) - 6 * flops.matmul_params(config) * seq_len


def test_window_matters():
  small = dataclasses.replace(TINY, attention_window=4)
  large = dataclasses.replace(TINY, attention_window=16)
  assert flops.train_flops(small, 1, 64) < flops.train_flops(large, 1, 64)
  # A window past the row is global attention.
  assert flops.train_flops(dataclasses.replace(TINY, attention_window=63), 1, 64) == (
      flops.train_flops(dataclasses.replace(TINY, attention_window=None), 1, 64))


def test_global_attention_grows_with_t_squared_local_linearly():
  mqa = dataclasses.replace(TINY, block_pattern=(A,), attention_window=None)
  for T in (64, 256):
    attn_T, attn_2T = _attention_flops(mqa, T), _attention_flops(mqa, 2 * T)
    assert attn_T == pytest.approx(12 * 3 * T * 8 * (T + 1) / 2)  # 3 layers, K = (T+1)/2
    assert attn_2T / attn_T == pytest.approx(2 * (2 * T + 1) / (T + 1))  # -> 4
  local = dataclasses.replace(mqa, attention_window=8)
  assert _attention_flops(local, 512) / _attention_flops(local, 256) == pytest.approx(2, rel=0.02)


def test_remat_recompute():
  full = dataclasses.replace(TINY, remat=Remat.FULL)
  assert flops.remat_flops(dataclasses.replace(TINY, remat=Remat.NONE), 2, 5) == 0
  # FULL recomputes the forward pass of every layer, not the output layer.
  assert flops.remat_flops(full, 2, 5) == pytest.approx(
      flops.forward_flops(full, 2, 5) - 2 * 5 * 2 * 10 * 8)
  saved = flops.remat_flops(dataclasses.replace(TINY, remat=Remat.SAVE_MATMULS), 2, 5)
  assert 0 < saved < flops.remat_flops(full, 2, 5)
