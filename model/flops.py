"""Analytic model FLOPs of a Griffin / Hawk / MQA step (the MFU convention).

Per token, with D width, E lru width, F MLP width, G gate blocks, H head dim,
N = D / H query heads, W conv width, V vocabulary, and a multiply-add = 2 FLOPs:

  forward = 2 * P_mm                                   linear layers
          + 4 * D * K  per attention layer             scores q.k and probs.v
          + (2 * W + RG_LRU_FLOPS_PER_CHANNEL) * E     per recurrent layer
  training = 3 * forward                               backward = 2 x forward

so training = 6 * P_mm * tokens + 12 * n_attn * tokens * K * D + the small
elementwise term. P_mm counts the weights of every matmul: per MLP 3 * D * F
(gate, up, down); per recurrent block 3 * D * E (x, y, out) + 2 * E^2 / G (the
block-diagonal input and recurrence gates); per attention block 2 * D^2 + 2 * D * H
(q, out, and the single k and v head); and V * D for the tied output layer (the
input lookup is not a matmul). Biases, norms, Conv1D taps and a_param are not
matmul weights.

K is the mean number of keys a query sees in a row of one document (segment_pos
= arange(T)): token t sees min(t, window) + 1 keys, so K = (T + 1) / 2 for global
attention and ~window + 1 for T >> window. Packing several documents per row makes
the true count smaller; this is the upper bound. (The implementation computes
the full T x T masked logits; MFU counts only the visible keys.)

Conv1D: W multiply-adds per channel and token = 2 * W FLOPs. RG-LRU, counting each
add, multiply and transcendental as one FLOP per channel and token: the gates'
bias adds 2, sigmoids 2, log a_t 2, exp(log a_t) and exp(2 log a_t) 2,
sqrt(1 - a_t^2) 2, the gated input 2, the recurrence a_t h + b_t 2 = 14.

Rematerialisation recomputes part of the forward pass; it is not counted (model
FLOPs, not hardware FLOPs).
"""

from common.checks import check_int
from model.config import BlockType, ModelConfig, Remat

RG_LRU_FLOPS_PER_CHANNEL = 14


def matmul_params(config: ModelConfig) -> int:
  """Weights of every matmul, the tied output layer counted once."""
  D, E, F, H = config.width, config.lru_width, config.mlp_width, config.head_dim
  per_block = {
      BlockType.RECURRENT: 3 * D * E + 2 * E * E // config.gate_blocks,
      BlockType.ATTENTION: 2 * D * D + 2 * D * H,
  }
  layers = sum(per_block[t] + 3 * D * F for t in config.block_types)
  return layers + config.vocab_size * D


def keys_per_query(seq_len: int, window: int | None) -> float:
  """Mean keys visible to a query over a row of one document of `seq_len`
  tokens: mean over t of min(t, window) + 1 (global: window = None)."""
  check_int("seq_len", seq_len)
  w = seq_len - 1 if window is None else min(window, seq_len - 1)
  # t < w: t + 1 keys; t >= w: w + 1 keys.
  total = w * (w + 1) // 2 + (seq_len - w) * (w + 1)
  return total / seq_len


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
  """Forward FLOPs per token of a row of `seq_len` tokens."""
  D, E = config.width, config.lru_width
  types = config.block_types
  n_attn = sum(t is BlockType.ATTENTION for t in types)
  n_rec = sum(t is BlockType.RECURRENT for t in types)
  K = keys_per_query(seq_len, config.attention_window)
  elementwise = (2 * config.conv_width + RG_LRU_FLOPS_PER_CHANNEL) * E
  return 2 * matmul_params(config) + n_attn * 4 * D * K + n_rec * elementwise


def forward_flops(config: ModelConfig, batch: int, seq_len: int) -> float:
  """Forward FLOPs of a (batch, seq_len) batch (evaluation, scoring)."""
  check_int("batch", batch)
  return batch * seq_len * forward_flops_per_token(config, seq_len)


def train_flops(config: ModelConfig, batch: int, seq_len: int) -> float:
  """Forward + backward FLOPs of one training step on a (batch, seq_len) batch
  (backward = 2 x forward); remat recomputation not counted."""
  return 3 * forward_flops(config, batch, seq_len)


def remat_flops(config: ModelConfig, batch: int, seq_len: int) -> float:
  """FLOPs the backward pass recomputes under `config.remat` (hardware FLOPs =
  train_flops + this). FULL recomputes every layer's forward (all but the
  output layer); SAVE_MATMULS keeps the projections' outputs and recomputes
  attention's batched dots and the elementwise work; NONE recomputes nothing."""
  if config.remat is Remat.NONE:
    return 0.0
  tokens = batch * seq_len
  if config.remat is Remat.FULL:
    output_layer = 2 * config.vocab_size * config.width
    return tokens * (forward_flops_per_token(config, seq_len) - output_layer)
  n_attn = sum(t is BlockType.ATTENTION for t in config.block_types)
  n_rec = len(config.block_types) - n_attn
  K = keys_per_query(seq_len, config.attention_window)
  elementwise = (2 * config.conv_width + RG_LRU_FLOPS_PER_CHANNEL) * config.lru_width
  return tokens * (n_attn * 4 * config.width * K + n_rec * elementwise)
