"""The CPU benchmark shapes A and B (benchmarks/train_step.py's docstring
describes them) and their inputs, shared by the benchmarks that time them."""

import dataclasses

import jax
import jax.numpy as jnp

from model.config import BlockType, ModelConfig, Remat, ScanImpl


@dataclasses.dataclass(frozen=True)
class Shape:
  width: int
  depth: int
  vocab: int
  seq: int
  batch: int


SHAPES = {"A": Shape(256, 6, 8192, 512, 8), "B": Shape(512, 6, 8192, 1024, 4)}


def model_config(shape: Shape, scan_impl: ScanImpl, remat: Remat) -> ModelConfig:
  """Griffin (R, R, A), f32, recurrentgemma's layout: lru_width = width, head
  dim 128, one gate block per head, MLP expansion 3, window min(1024, T)."""
  return ModelConfig(
      vocab_size=shape.vocab, width=shape.width, depth=shape.depth,
      lru_width=shape.width,
      block_pattern=(BlockType.RECURRENT, BlockType.RECURRENT, BlockType.ATTENTION),
      attention_window=min(1024, shape.seq), head_dim=128, mlp_expansion=3,
      gate_blocks=shape.width // 128, scan_impl=scan_impl, remat=remat,
      compute_dtype="float32")


def inputs(shape: Shape):
  """Random tokens (B, T) and a packed layout: 2 documents of T/2 per row."""
  tokens_BT = jax.random.randint(jax.random.key(1), (shape.batch, shape.seq), 0,
                                 shape.vocab, jnp.int32)
  pos_T = jnp.arange(shape.seq, dtype=jnp.int32) % (shape.seq // 2)
  return tokens_BT, jnp.broadcast_to(pos_T, (shape.batch, shape.seq))
