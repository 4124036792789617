"""Multi-query attention with RoPE (paper §2.3): local (sliding window) in
Griffin, global in the MQA baseline. One K/V head is shared by all N query
heads."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from model import sequence, splash_attention
from model.config import AttentionImpl
from model.layers import constrain, fan_in_normal, gathered, lead, param
from model.scan import target_platform

_MASKED = -2.3819763e38  # recurrentgemma's fill value for masked logits.


class AttentionCache(NamedTuple):
  """Ring buffer of the last S keys and values of one attention block."""
  k_BSH: jax.Array
  v_BSH: jax.Array
  pos_BS: jax.Array  # segment_pos of the key in each slot; -1 = empty.


def apply_rope(x_BT_H, segment_pos_BT, max_wavelength: float):
  """Rotary embedding on the first half of the last axis (rotate-half pairs);
  the second half passes through, as in recurrentgemma."""
  x_rope, x_pass = jnp.split(x_BT_H, 2, axis=-1)
  half = x_rope.shape[-1] // 2
  inv_freq = 1.0 / max_wavelength ** (2 * jnp.arange(half) / x_rope.shape[-1])
  pos = segment_pos_BT.reshape(segment_pos_BT.shape + (1,) * (x_BT_H.ndim - 2))
  angle = pos * lead(inv_freq, pos.ndim)
  sin, cos = jnp.sin(angle).astype(x_BT_H.dtype), jnp.cos(angle).astype(x_BT_H.dtype)
  first, second = jnp.split(x_rope, 2, axis=-1)
  return jnp.concatenate([first * cos - second * sin, second * cos + first * sin, x_pass],
                         axis=-1)


class AttentionBlock(nnx.Module):
  """MQA: query heads project D -> N x H, one key and one value head D -> H.

  Token t at position p sees key s iff s <= t, t - s <= p (same document) and
  t - s <= window (window + 1 keys including itself; None = global).
  A full sequence goes through the splash kernel or the XLA einsums as
  `impl` says (`_use_splash`); the values are the same.
  """

  def __init__(self, width: int, head_dim: int, *, window: int | None,
               rope_max_wavelength: float, out_init_scale: float, dtype, rngs: nnx.Rngs,
               impl: AttentionImpl = AttentionImpl.AUTO):
    N = width // head_dim
    self.q = param(fan_in_normal(rngs.params(), (width, N, head_dim), width),
                   ("embed", "heads", "head_dim"))
    self.k = param(fan_in_normal(rngs.params(), (width, head_dim), width),
                   ("embed", "head_dim"))
    self.v = param(fan_in_normal(rngs.params(), (width, head_dim), width),
                   ("embed", "head_dim"))
    self.out = param(fan_in_normal(rngs.params(), (N, head_dim, width), width, out_init_scale),
                     ("heads", "head_dim", "embed"))
    self.out_bias = param(jnp.zeros((width,)), ("embed",))
    self.window = window
    self.rope_max_wavelength = rope_max_wavelength
    self.dtype = dtype
    self.impl = impl

  def init_cache(self, batch: int, length: int) -> AttentionCache:
    """An empty cache; `length` is used only for global attention."""
    S = self.window if self.window is not None else length
    H = self.k.shape[1]
    return AttentionCache(k_BSH=jnp.zeros((batch, S, H), self.dtype),
                          v_BSH=jnp.zeros((batch, S, H), self.dtype),
                          pos_BS=jnp.full((batch, S), -1, jnp.int32))

  def __call__(self, x_BTD, segment_pos_BT, cache: AttentionCache | None = None,
               cache_length: int | None = None):
    """Full-sequence attention when `cache` is None, else one decode step
    (T = 1) against the cache. The returned cache is the one a decode would
    continue from; without a cache, it is built only when `cache_length` (the
    slot count for global attention) is given, and None otherwise."""
    x_BTD = x_BTD.astype(self.dtype)
    q_BTNH = jnp.einsum("BTD,DNH->BTNH", x_BTD, gathered(self.q, self.dtype))
    k_BTH = jnp.einsum("BTD,DH->BTH", x_BTD, gathered(self.k, self.dtype))
    v_BTH = jnp.einsum("BTD,DH->BTH", x_BTD, gathered(self.v, self.dtype))
    q_BTNH = constrain(apply_rope(q_BTNH, segment_pos_BT, self.rope_max_wavelength),
                       ("batch", "length", "heads", None))
    # The one K/V head is computed on every tensor shard (replicated).
    k_BTH = constrain(apply_rope(k_BTH, segment_pos_BT, self.rope_max_wavelength),
                      ("batch", "length", None))
    v_BTH = constrain(v_BTH, ("batch", "length", None))

    if cache is None:
      if sequence.shards() > 1:
        enc_BTNH = self._sequence_parallel_attend(q_BTNH, k_BTH, v_BTH, segment_pos_BT)
      elif self._use_splash(q_BTNH.shape[1]):
        enc_BTNH = splash_attention.sharded_splash_attend(q_BTNH, k_BTH, v_BTH,
                                                          segment_pos_BT, self.window)
      elif self._chunk(q_BTNH.shape[1]):
        enc_BTNH = self._blocked_attend(q_BTNH, k_BTH, v_BTH, segment_pos_BT)
      else:
        mask_BTS = self._sequence_mask(segment_pos_BT)
        enc_BTNH = self._attend(q_BTNH, k_BTH, v_BTH, mask_BTS)
      new_cache = (None if cache_length is None else
                   self._cache_from_sequence(k_BTH, v_BTH, segment_pos_BT, cache_length))
    else:
      enc_BTNH, new_cache = self._decode(q_BTNH, k_BTH, v_BTH, segment_pos_BT, cache)
    out_BTD = jnp.einsum("BTNH,NHD->BTD", enc_BTNH, gathered(self.out, self.dtype))
    return out_BTD + lead(self.out_bias[...].astype(self.dtype), 3), new_cache

  def _use_splash(self, T: int) -> bool:
    """SPLASH: always (refusing shapes the kernel cannot take); AUTO: when
    compiling for TPU and the shapes fit, decided when traced (so an ahead-
    of-time TPU compile from a CPU host gets the kernel); XLA: never."""
    if self.impl is AttentionImpl.XLA:
      return False
    why = splash_attention.unsupported(T, self.k.shape[1])
    if self.impl is AttentionImpl.SPLASH and why:
      raise ValueError(f"model.attention_impl=splash: {why}; or use attention_impl=auto, "
                       "which falls back to the XLA attention.")
    return why is None and (self.impl is AttentionImpl.SPLASH or target_platform() == "tpu")

  def _sequence_mask(self, segment_pos_BT):
    T = segment_pos_BT.shape[1]
    delta_1TS = (jnp.arange(T)[:, None] - jnp.arange(T)[None, :])[None]  # t - s
    mask_BTS = (delta_1TS >= 0) & (delta_1TS <= segment_pos_BT[:, :, None])
    if self.window is not None:
      mask_BTS &= delta_1TS <= self.window
    return mask_BTS

  def _chunk(self, T: int) -> int:
    """The block length C of `_blocked_attend` for rows of T tokens: the
    smallest divisor of T that holds a window (C >= w), or 0 where blocking
    would not score fewer logits than the T x T mask (2C >= T, or global)."""
    if self.window is None:
      return 0
    chunk = next(c for c in range(min(self.window, T), T + 1) if T % c == 0)
    return chunk if 2 * chunk < T else 0

  def _blocked_attend(self, q_BTNH, k_BTH, v_BTH, segment_pos_BT):
    """Local attention in blocks of C >= w queries, each against the keys of
    its own block and the one before (K = T/C blocks): T x 2C logits where
    the plain mask would score T x T, the same visible keys, so the same
    values up to f32 summation order. Linear in T at a fixed window."""
    B, T, N, H = q_BTNH.shape
    C = self._chunk(T)
    K = T // C

    def with_previous_block(x_BTH):  # (B*K, 2C, H): block k-1 (zeros for k=0), block k
      x_BKCH = x_BTH.reshape(B, K, C, H)
      previous_BKCH = jnp.pad(x_BKCH[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
      return jnp.concatenate([previous_BKCH, x_BKCH], axis=2).reshape(B * K, 2 * C, H)

    t_KC = jnp.arange(T).reshape(K, C)
    s_KS = t_KC[:, :1] - C + jnp.arange(2 * C)[None]  # the keys' positions in the row
    delta_KCS = t_KC[:, :, None] - s_KS[:, None, :]  # t - s
    pos_BKC1 = segment_pos_BT.reshape(B, K, C, 1)
    mask_BKCS = ((delta_KCS >= 0) & (delta_KCS <= self.window) & (s_KS >= 0)[:, None])[None]
    mask_BKCS &= delta_KCS[None] <= pos_BKC1
    enc_BKCNH = self._attend(q_BTNH.reshape(B * K, C, N, H), with_previous_block(k_BTH),
                             with_previous_block(v_BTH), mask_BKCS.reshape(B * K, C, 2 * C))
    return enc_BKCNH.reshape(B, T, N, H)

  def _sequence_parallel_attend(self, q_BTNH, k_BTH, v_BTH, segment_pos_BT):
    """Attention with time split over P sequence shards (`model/sequence.py`).

    Each shard's queries meet the keys they may see: with a window w, those of
    the w tokens before the shard, from the ceil(w / (T/P)) previous shards
    (collective-permutes of the single K/V head), so a shard scores T/P x
    (w + T/P) logits; for global attention, or a window that reaches back
    over every earlier shard, all T keys (one all-gather of K and V). The
    mask is the unsharded one, from global positions and the queries'
    segment_pos (a key s is visible to query t iff 0 <= t - s <= segment_pos
    and, locally, t - s <= window).
    """
    P, T = sequence.shards(), q_BTNH.shape[1]
    T_local = T // P
    hops = None if self.window is None else -(-self.window // T_local)
    gather_all = hops is None or hops >= P - 1

    def local(q_BTNH, k_BTH, v_BTH, segment_pos_BT):
      t_T = sequence.index() * T_local + jnp.arange(T_local)  # global query positions
      if gather_all:
        k_BSH, v_BSH = sequence.gather(k_BTH), sequence.gather(v_BTH)
        s_S = jnp.arange(T)
      else:  # previous shards' blocks, oldest first, then the last w + T/P keys
        def halo(x_BTH):
          blocks = [sequence.previous(x_BTH, hop) for hop in range(hops, 0, -1)]
          return jnp.concatenate([*blocks, x_BTH], axis=1)[:, hops * T_local - self.window:]
        k_BSH, v_BSH = halo(k_BTH), halo(v_BTH)
        s_S = t_T[0] - self.window + jnp.arange(self.window + T_local)
      delta_1TS = (t_T[:, None] - s_S[None, :])[None]  # t - s
      # s < 0: the zeros the first shards receive, before the row starts.
      mask_BTS = ((delta_1TS >= 0) & (delta_1TS <= segment_pos_BT[:, :, None])
                  & (s_S >= 0)[None, None])
      if self.window is not None:
        mask_BTS &= delta_1TS <= self.window
      return (self._attend(q_BTNH, k_BSH, v_BSH, mask_BTS),)

    return sequence.shard_map(
        local, in_names=(("batch", "length", "heads", None), ("batch", "length", None),
                         ("batch", "length", None), ("batch", "length")),
        out_names=(("batch", "length", "heads", None),),
    )(q_BTNH, k_BTH, v_BTH, segment_pos_BT)[0]

  def _attend(self, q_BTNH, k_BSH, v_BSH, mask_BTS):
    H = q_BTNH.shape[-1]
    logits_BNTS = jnp.einsum("BTNH,BSH->BNTS", q_BTNH, k_BSH,
                             preferred_element_type=jnp.float32) * H**-0.5
    logits_BNTS = jnp.where(mask_BTS[:, None], logits_BNTS, _MASKED)
    probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1).astype(v_BSH.dtype)
    return jnp.einsum("BNTS,BSH->BTNH", probs_BNTS, v_BSH)

  def _cache_from_sequence(self, k_BTH, v_BTH, segment_pos_BT, length):
    """The ring buffer after the sequence: the last S keys of the row's last
    document, each in slot segment_pos % S."""
    B, T, _ = k_BTH.shape
    empty = self.init_cache(B, length)
    S = empty.pos_BS.shape[1]
    last_doc_start_B1 = T - 1 - segment_pos_BT[:, -1:]
    t_1T = jnp.arange(T)[None]
    keep_BT = (t_1T >= last_doc_start_B1) & (t_1T >= T - S)
    slot_BT = jnp.where(keep_BT, segment_pos_BT % S, S)  # slot S is dropped.
    b_B1 = jnp.arange(B)[:, None]
    return AttentionCache(
        k_BSH=empty.k_BSH.at[b_B1, slot_BT].set(k_BTH, mode="drop"),
        v_BSH=empty.v_BSH.at[b_B1, slot_BT].set(v_BTH, mode="drop"),
        pos_BS=empty.pos_BS.at[b_B1, slot_BT].set(segment_pos_BT, mode="drop"))

  def _decode(self, q_B1NH, k_B1H, v_B1H, segment_pos_B1, cache: AttentionCache):
    S = cache.pos_BS.shape[1]
    p_B1 = segment_pos_B1
    # A new document (p == 0) must not see the previous one's keys.
    pos_BS = jnp.where(p_B1 == 0, -1, cache.pos_BS)
    visible_BS = (pos_BS >= 0) & (pos_BS < p_B1)
    if self.window is not None:
      visible_BS &= p_B1 - pos_BS <= self.window
    # The cached keys and the token's own key are scored apart and share one
    # softmax, so the K/V cache is never copied to append the new key.
    H = q_B1NH.shape[-1]
    q_BNH = q_B1NH[:, 0]
    cached_BNS = jnp.einsum("BNH,BSH->BNS", q_BNH, cache.k_BSH,
                            preferred_element_type=jnp.float32) * H**-0.5
    cached_BNS = jnp.where(visible_BS[:, None], cached_BNS, _MASKED)
    own_BN1 = jnp.einsum("BNH,BTH->BNT", q_BNH, k_B1H,
                         preferred_element_type=jnp.float32) * H**-0.5
    probs_BNS = jax.nn.softmax(jnp.concatenate([cached_BNS, own_BN1], axis=-1), axis=-1)
    probs_BNS = probs_BNS.astype(v_B1H.dtype)
    enc_BNH = (jnp.einsum("BNS,BSH->BNH", probs_BNS[..., :S], cache.v_BSH)
               + jnp.einsum("BNT,BTH->BNH", probs_BNS[..., S:], v_B1H))
    enc_B1NH = enc_BNH[:, None]
    b_B = jnp.arange(p_B1.shape[0])
    slot_B = p_B1[:, 0] % S
    new_cache = AttentionCache(k_BSH=cache.k_BSH.at[b_B, slot_B].set(k_B1H[:, 0]),
                               v_BSH=cache.v_BSH.at[b_B, slot_B].set(v_B1H[:, 0]),
                               pos_BS=pos_BS.at[b_B, slot_B].set(p_B1[:, 0]))
    return enc_B1NH, new_cache
