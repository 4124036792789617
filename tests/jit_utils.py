"""Jitted views of an NNX model for tests (eager NNX dispatch is slow on CPU)."""

import jax
from flax import nnx


def jit_forward(model):
  """`f(tokens_BT, segment_pos_BT) -> logits_BTV` compiled once per shape."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, tokens_BT, segment_pos_BT):
    return nnx.merge(graphdef, state)(tokens_BT, segment_pos_BT)[0]

  return lambda tokens_BT, segment_pos_BT: forward(state, tokens_BT, segment_pos_BT)
