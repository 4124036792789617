"""The recurrent block (paper §2.3) and its RG-LRU (paper §2.4, eqs. 1-4)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from model import sequence
from model.config import AInit, ScanImpl
from model.layers import Linear, constrain, fan_in_normal, gathered, lead, param
from model.scan import get_scan, sequence_parallel_scan


class RecurrentCache(NamedTuple):
  """Decode state of one recurrent block."""
  h_BE: jax.Array  # RG-LRU state, always f32.
  conv_BWE: jax.Array  # The last W-1 inputs of the Conv1D (oldest first).


@jax.custom_vjp
def sqrt_bounded_grad(x):
  """sqrt(x) whose derivative is clipped at 1000.

  The derivative of sqrt(1 - a_t^2) blows up as a_t -> 1; unclipped it gives
  NaNs in bf16 training (recurrentgemma does the same).
  """
  return jnp.sqrt(x)


def _sqrt_fwd(x):
  return jnp.sqrt(x), x


def _sqrt_bwd(x, g):
  return (g / (2 * jnp.sqrt(jnp.maximum(x, 1 / (4 * 1000.0**2)))),)


sqrt_bounded_grad.defvjp(_sqrt_fwd, _sqrt_bwd)


def init_a_param(key, width: int, c: float, a_init: AInit) -> jax.Array:
  """a_param = -Λ, so that a = sigmoid(Λ) = exp(-softplus(a_param)) (App. A)."""
  u_E = jax.random.uniform(key, (width,), jnp.float32)
  if a_init is AInit.PAPER:  # a^c uniform in [0.9, 0.999] (§2.4).
    log_a_E = jnp.log(0.9 + u_E * (0.999 - 0.9)) / c
  else:  # recurrentgemma: a in [0.9, 0.999], uniform in a^2.
    log_a_E = 0.5 * jnp.log(0.9**2 + u_E * (0.999**2 - 0.9**2))
  return jnp.log(jnp.expm1(-log_a_E))  # softplus^-1(-log a)


class BlockDiagonalLinear(nnx.Module):
  """G independent I x I linears: the gates need no communication when the
  tensor axis shards whole blocks (paper §4.1)."""

  def __init__(self, width: int, blocks: int, *, rngs: nnx.Rngs):
    size = width // blocks
    # Fan-in counts all blocks, as in recurrentgemma's initialiser.
    self.w = param(fan_in_normal(rngs.params(), (blocks, size, size), width),
                   ("gate_block", "gate_in", None))
    self.b = param(jnp.zeros((blocks, size)), ("gate_block", None))

  def __call__(self, x_BTE):
    G, I, _ = self.w.shape
    x_BTGI = x_BTE.reshape(*x_BTE.shape[:-1], G, I)
    y_BTGI = jnp.einsum("BTGI,GIJ->BTGJ", x_BTGI, gathered(self.w)) + lead(self.b[...], 4)
    return y_BTGI.reshape(x_BTE.shape)


class RGLRU(nnx.Module):
  """Real-Gated Linear Recurrent Unit, computed in f32 whatever the compute dtype.

    r_t = σ(W_a x_t + b_a)                 recurrence gate   (eq. 1)
    i_t = σ(W_x x_t + b_x)                 input gate        (eq. 2)
    log a_t = -c r_t softplus(a_param)     a_t = a^(c r_t)   (eq. 3, App. A)
    h_t = a_t h_{t-1} + sqrt(1 - a_t²) (i_t x_t)             (eq. 4)

  At a document start (segment_pos == 0) a_t = 0 and the sqrt factor is 1, so
  the state restarts from the token itself.
  """

  def __init__(self, width: int, blocks: int, *, c: float, a_init: AInit,
               scan_impl: ScanImpl, rngs: nnx.Rngs):
    self.input_gate = BlockDiagonalLinear(width, blocks, rngs=rngs)
    self.a_gate = BlockDiagonalLinear(width, blocks, rngs=rngs)
    self.a_param = param(init_a_param(rngs.params(), width, c, a_init), ("lru",))
    self.c = c
    self.scan = get_scan(scan_impl)

  def __call__(self, x_BTE, segment_pos_BT, h0_BE):
    x_BTE = x_BTE.astype(jnp.float32)
    gate_x_BTE = jax.nn.sigmoid(self.input_gate(x_BTE))
    gate_a_BTE = jax.nn.sigmoid(self.a_gate(x_BTE))
    log_a_BTE = -self.c * gate_a_BTE * lead(jax.nn.softplus(self.a_param[...]), 3)
    a_BTE = jnp.exp(log_a_BTE)
    multiplier_BTE = sqrt_bounded_grad(1 - jnp.exp(2 * log_a_BTE))
    reset_BT1 = (segment_pos_BT == 0)[..., None]
    multiplier_BTE = jnp.where(reset_BT1, 1.0, multiplier_BTE)
    a_BTE = jnp.where(reset_BT1, 0.0, a_BTE)
    return sequence_parallel_scan(self.scan, a_BTE, x_BTE * gate_x_BTE * multiplier_BTE,
                                  h0_BE)


def causal_conv(x_BTE, segment_pos_BT, history_BWE, w_WE, b_E):
  """The Conv1D on one stretch of time: (y_BTE, its last W-1 inputs)."""
  W = w_WE.shape[0]
  T = x_BTE.shape[1]
  padded_BTE = jnp.concatenate([history_BWE.astype(x_BTE.dtype), x_BTE], axis=1)
  y_BTE = jnp.zeros_like(x_BTE)
  for k in range(W):  # W is 4: unrolled, each tap one fused multiply-add.
    tap_BTE = padded_BTE[:, W - 1 - k: W - 1 - k + T]
    valid_BT1 = (segment_pos_BT >= k)[..., None]
    w_11E = lead(w_WE[W - 1 - k].astype(x_BTE.dtype), 3)
    y_BTE += jnp.where(valid_BT1, tap_BTE * w_11E, 0)
  return y_BTE + lead(b_E.astype(x_BTE.dtype), 3), padded_BTE[:, T:]


def sequence_parallel_conv(x_BTE, segment_pos_BT, history_BWE, w_WE, b_E):
  """`causal_conv` with time split over sequence shards (`model/sequence.py`):
  each shard's history is the previous shard's last W-1 inputs (one
  collective-permute of (B, W-1, E)), the first shard's is `history_BWE`.
  A tap is still used only when k <= segment_pos of the token it feeds, so
  documents stay cut at shard boundaries as anywhere else."""
  W = w_WE.shape[0]

  def local(x_BTE, segment_pos_BT, history_BWE, w_WE, b_E):
    halo_BWE = sequence.previous(x_BTE[:, x_BTE.shape[1] - (W - 1):])
    history_BWE = jnp.where(sequence.index() == 0, history_BWE.astype(x_BTE.dtype), halo_BWE)
    return causal_conv(x_BTE, segment_pos_BT, history_BWE, w_WE, b_E)

  x_names = ("batch", "length", "lru")
  y_BTE, last_BPE = sequence.shard_map(
      local, in_names=(x_names, ("batch", "length"), ("batch", None, "lru"),
                       (None, "lru"), ("lru",)),
      out_names=(x_names, x_names))(x_BTE, segment_pos_BT, history_BWE, w_WE, b_E)
  return y_BTE, last_BPE[:, last_BPE.shape[1] - (W - 1):]  # the last shard's


class Conv1D(nnx.Module):
  """Causal depthwise convolution over time; w[W-1] multiplies the current
  token, w[0] the one W-1 steps back. A tap k steps back is used only when
  k <= segment_pos, i.e. inside the same document."""

  def __init__(self, width: int, conv_width: int, *, rngs: nnx.Rngs):
    self.w = param(fan_in_normal(rngs.params(), (conv_width, width), conv_width, 0.01),
                   (None, "lru"))
    self.b = param(jnp.zeros((width,)), ("lru",))

  def __call__(self, x_BTE, segment_pos_BT, history_BWE):
    """`history_BWE` holds the W-1 inputs before x (zeros when none)."""
    conv = causal_conv if sequence.shards() == 1 else sequence_parallel_conv
    return conv(x_BTE, segment_pos_BT, history_BWE, self.w[...], self.b[...])


class RecurrentBlock(nnx.Module):
  """Two D->E branches: GeLU(x W_y) and RG-LRU(Conv1D(x W_x)), multiplied, then E->D."""

  def __init__(self, width: int, lru_width: int, *, conv_width: int, gate_blocks: int,
               c: float, a_init: AInit, scan_impl: ScanImpl, gelu_tanh: bool,
               out_init_scale: float, dtype, rngs: nnx.Rngs):
    # Both D -> E branch projections in one (D, 2, E) weight: [:, 0] feeds the
    # Conv1D/RG-LRU branch (recurrentgemma's linear_x), [:, 1] the GeLU gate
    # (linear_y). One contraction means one all-reduce of dL/dx under tensor
    # parallelism, exactly like the MLP's stacked up-projection (paper §4.1);
    # D leads for the same reason as there.
    in_2DE = fan_in_normal(rngs.params(), (2, width, lru_width), width)
    self.in_proj = param(jnp.transpose(in_2DE, (1, 0, 2)), ("embed", None, "lru"))
    self.in_bias = param(jnp.zeros((2, lru_width)), (None, "lru"))
    self.linear_out = Linear(lru_width, width, axes=("lru", "embed"), use_bias=True,
                             init_scale=out_init_scale, dtype=dtype, rngs=rngs)
    self.conv_1d = Conv1D(lru_width, conv_width, rngs=rngs)
    self.rg_lru = RGLRU(lru_width, gate_blocks, c=c, a_init=a_init,
                        scan_impl=scan_impl, rngs=rngs)
    self.gelu_tanh = gelu_tanh
    self.dtype = dtype

  def init_cache(self, batch: int) -> RecurrentCache:
    W, E = self.conv_1d.w.shape
    return RecurrentCache(h_BE=jnp.zeros((batch, E), jnp.float32),
                          conv_BWE=jnp.zeros((batch, W - 1, E), self.dtype))

  def __call__(self, x_BTD, segment_pos_BT, cache: RecurrentCache | None = None):
    """Returns the block output and the cache after the last token."""
    if cache is None:
      cache = self.init_cache(x_BTD.shape[0])
    # Channels stay split over the tensor axis from linear_x/y to linear_out.
    lru_axes = ("batch", "length", "lru")
    in_BT2E = jnp.einsum("BTD,DCE->BTCE", x_BTD.astype(self.dtype),
                         gathered(self.in_proj, self.dtype))
    in_BT2E = in_BT2E + lead(self.in_bias[...].astype(self.dtype), 4)
    x_BTE = constrain(in_BT2E[:, :, 0], lru_axes)
    y_BTE = constrain(jax.nn.gelu(in_BT2E[:, :, 1], approximate=self.gelu_tanh), lru_axes)
    x_BTE, conv_BWE = self.conv_1d(x_BTE, segment_pos_BT, cache.conv_BWE)
    h_BTE, h_BE = self.rg_lru(x_BTE, segment_pos_BT, cache.h_BE)
    h_BTE = constrain(h_BTE, lru_axes)
    out_BTD = self.linear_out(h_BTE.astype(self.dtype) * y_BTE)
    return out_BTD, RecurrentCache(h_BE=h_BE, conv_BWE=conv_BWE.astype(self.dtype))
