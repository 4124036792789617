"""The Griffin / Hawk / MQA language model: residual blocks in scanned groups."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from model import sequence, splash_attention
from model.attention import AttentionBlock
from model.config import BlockType, ModelConfig, Remat
from model.layers import Embedder, MLPBlock, RMSNorm, constrain
from model.recurrent import RecurrentBlock

REMAT_POLICIES = {
    Remat.FULL: jax.checkpoint_policies.nothing_saveable,
    # Projections have no batch dims in their dot_general; attention's do, so
    # its T x S logits are recomputed rather than kept. The splash kernel's
    # output and log-sum-exp (the size of the queries) are kept, so its
    # forward does not run again in the backward pass.
    Remat.SAVE_MATMULS: jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(splash_attention.RESIDUALS)),
}


class ResidualBlock(nnx.Module):
  """Pre-norm residual block (paper §2.1):
  h = x + Temporal(RMSNorm(x));  out = h + MLP(RMSNorm(h))."""

  def __init__(self, config: ModelConfig, block_type: BlockType, rngs: nnx.Rngs):
    dtype = jnp.dtype(config.compute_dtype)
    # recurrentgemma scales each block's final projection by 2 / depth.
    out_scale = 2.0 / config.depth
    self.temporal_pre_norm = RMSNorm(config.width, eps=config.norm_eps, dtype=dtype)
    if block_type is BlockType.RECURRENT:
      self.temporal = RecurrentBlock(
          config.width, config.lru_width, conv_width=config.conv_width,
          gate_blocks=config.gate_blocks, c=config.lru_c, a_init=config.a_init,
          scan_impl=config.scan_impl, gelu_tanh=config.gelu_tanh,
          out_init_scale=out_scale, dtype=dtype, rngs=rngs)
    else:
      self.temporal = AttentionBlock(
          config.width, config.head_dim, window=config.attention_window,
          rope_max_wavelength=config.rope_max_wavelength, out_init_scale=out_scale,
          impl=config.attention_impl, dtype=dtype, rngs=rngs)
    self.channel_pre_norm = RMSNorm(config.width, eps=config.norm_eps, dtype=dtype)
    self.mlp = MLPBlock(config.width, config.mlp_width, gelu_tanh=config.gelu_tanh,
                        out_init_scale=out_scale, dtype=dtype, rngs=rngs)

  def init_cache(self, batch: int, length: int):
    if isinstance(self.temporal, AttentionBlock):
      return self.temporal.init_cache(batch, length)
    return self.temporal.init_cache(batch)

  def __call__(self, x_BTD, segment_pos_BT, cache=None, cache_length=None):
    normed_BTD = self.temporal_pre_norm(x_BTD)
    if isinstance(self.temporal, AttentionBlock):
      y_BTD, cache = self.temporal(normed_BTD, segment_pos_BT, cache, cache_length)
    else:
      y_BTD, cache = self.temporal(normed_BTD, segment_pos_BT, cache)
    h_BTD = x_BTD + y_BTD
    return h_BTD + self.mlp(self.channel_pre_norm(h_BTD)), cache


class LayerGroup(nnx.Module):
  """One repetition of the block pattern, e.g. (R, R, A): the unit scanned over."""

  def __init__(self, config: ModelConfig, block_types: tuple[BlockType, ...],
               rngs: nnx.Rngs):
    self.blocks = nnx.List([ResidualBlock(config, t, rngs) for t in block_types])

  def init_cache(self, batch: int, length: int):
    return tuple(block.init_cache(batch, length) for block in self.blocks)

  def __call__(self, x_BTD, segment_pos_BT, cache=None, cache_length=None):
    caches = cache if cache is not None else (None,) * len(self.blocks)
    new_caches = []
    for block, block_cache in zip(self.blocks, caches):
      x_BTD, block_cache = block(x_BTD, segment_pos_BT, block_cache, cache_length)
      new_caches.append(block_cache)
    return x_BTD, tuple(new_caches)


class Griffin(nnx.Module):
  """Embedding -> L scanned groups of `block_pattern` -> leftover layers ->
  RMSNorm -> tied output layer (paper §2)."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.config = config
    dtype = jnp.dtype(config.compute_dtype)
    self.embedder = Embedder(config.vocab_size, config.width,
                             scale_by_sqrt_dim=config.embed_scale_by_sqrt_dim,
                             soft_cap=config.logits_soft_cap, dtype=dtype, rngs=rngs)
    # Parameters of all groups stacked on a leading "layers" axis.
    @nnx.split_rngs(splits=max(config.num_groups, 1))
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_groups(rngs):
      return LayerGroup(config, config.block_pattern, rngs)
    self.groups = nnx.data(make_groups(rngs) if config.num_groups else None)
    self.tail = nnx.data(
        LayerGroup(config, config.tail_types, rngs) if config.tail_types else None)
    self.final_norm = RMSNorm(config.width, eps=config.norm_eps, dtype=dtype)

  def init_cache(self, batch: int, length: int = 0) -> dict[str, Any]:
    """An empty decode cache; `length` sizes global-attention caches (the most
    tokens, prompt included, that will be decoded)."""
    if self._has_global_attention() and length < 1:
      raise ValueError(f"init_cache length={length}: global attention needs the most "
                       "tokens (prompt included) the cache will hold, >= 1")
    cache = {"groups": None, "tail": None}
    if self.groups is not None:
      cache["groups"] = nnx.vmap(
          lambda group: group.init_cache(batch, length), in_axes=0, out_axes=0)(self.groups)
    if self.tail is not None:
      cache["tail"] = self.tail.init_cache(batch, length)
    return cache

  def __call__(self, tokens_BT, segment_pos_BT, cache=None, cache_length=None):
    """Logits (f32) for every position.

    Training and scoring: `cache=None, cache_length=None` (no cache built).
    Prefill: `cache=None, cache_length=n` also returns the cache to decode from
    (n sizes global-attention caches). Decode: pass the cache and T = 1 tokens.
    Returns (logits_BTV, cache or None).
    """
    return self.from_embeddings(self.embedder.encode(tokens_BT), segment_pos_BT,
                                cache, cache_length)

  def from_embeddings(self, x_BTD, segment_pos_BT, cache=None, cache_length=None):
    """`__call__` from the embedded tokens (e.g. to differentiate by input)."""
    self._check_inputs(x_BTD, segment_pos_BT, cache, cache_length)
    build_cache = cache is not None or cache_length is not None
    cache = cache or {"groups": None, "tail": None}
    x_BTD, groups_cache = self._scan_groups(x_BTD, segment_pos_BT, cache["groups"],
                                            cache_length, build_cache)
    tail_cache = None
    if self.tail is not None:
      tail = self._remat(lambda tail, x, c: tail(x, segment_pos_BT, c, cache_length))
      x_BTD, tail_cache = tail(self.tail, x_BTD, cache["tail"])
    logits_BTV = self.embedder.decode(self.final_norm(x_BTD))
    new_cache = {"groups": groups_cache, "tail": tail_cache} if build_cache else None
    return logits_BTV, new_cache

  def _check_inputs(self, x_BTD, segment_pos_BT, cache, cache_length):
    """Shape errors at trace time, before anything compiles."""
    B, T = x_BTD.shape[:2]
    if segment_pos_BT.shape != (B, T):
      raise ValueError(f"segment_pos shape {segment_pos_BT.shape} != tokens shape {(B, T)}")
    if cache is not None and T != 1:
      raise ValueError(f"decoding with a cache takes one token per call, got T={T}; "
                       "run the prompt with cache=None, cache_length=n first")
    if (cache is None and cache_length is not None and self._has_global_attention()
        and cache_length < T):
      raise ValueError(f"cache_length={cache_length} is shorter than the prompt (T={T}); "
                       "global attention needs room for every token it will see")
    if cache is not None and sequence.shards() > 1:
      raise ValueError("decoding with a cache under a mesh that splits time over "
                       f"{sequence.shards()} sequence shards: one token cannot be split; "
                       "decode under a mesh with sequence size 1 (a data-parallel one)")
    # Sequence parallelism: each shard's Conv1D halo comes from its neighbour.
    if BlockType.RECURRENT in self.config.block_types:
      sequence.check_length(T, max(self.config.conv_width - 1, 1),
                            "the Conv1D's halo (model.conv_width - 1)")
    else:
      sequence.check_length(T, 1, "each shard")

  def _has_global_attention(self) -> bool:
    return (BlockType.ATTENTION in self.config.block_types
            and self.config.attention_window is None)

  def _scan_groups(self, x_BTD, segment_pos_BT, cache, cache_length, build_cache):
    if self.groups is None:
      return x_BTD, None
    graphdef, params = nnx.split(self.groups)

    def body(x_BTD, layer):
      x_BTD = constrain(x_BTD, ("batch", "length", None))
      group_params, group_cache = layer
      group = nnx.merge(graphdef, group_params)
      x_BTD, group_cache = group(x_BTD, segment_pos_BT, group_cache, cache_length)
      return x_BTD, group_cache if build_cache else None

    return jax.lax.scan(self._remat(body), x_BTD, (params, cache))

  def _remat(self, fn):
    if self.config.remat is Remat.NONE:
      return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[self.config.remat], prevent_cse=False)
