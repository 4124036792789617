"""The RG-LRU's recurrence h_t = a_t h_{t-1} + b_t as a Pallas TPU kernel.

Paper §4.2 / App. D: the scan moves 8 bytes per 6 FLOPs, so it is bound by
HBM <-> VMEM traffic; a sequential scan that keeps h in VMEM and streams a and
b in large blocks beat `lax.scan` about 3x on TPU v3. This is that kernel.

Layout: channels go to (E/128 rows, 128 lanes), so one time step of a block is
a (rows, 128) tile of whole vregs and time is an untiled leading axis: a step
at any t is an aligned load (rows of the time axis itself would have to be
loaded 8 at a time in f32, 16 in bf16). E not a multiple of 128 becomes one
row of E lanes (correct, partly empty vregs). On TPU the reshape to rows and
lanes is a relayout: XLA fuses it into a neighbour or copies (as it does for
linear_scan's time-major swap).

Grid (B, E blocks, T blocks): batch and channel blocks are independent
("parallel"); time blocks run in order ("arbitrary") and hand the f32 state on
through a VMEM scratch. The backward pass (`jax.custom_vjp`) is a sibling
kernel over the same blocks in reverse time order.

Under a mesh the kernel runs inside `jax.shard_map` (pallas_call is not
partitioned by GSPMD): batch and channels are split as the activations are,
time stays whole, so every shard runs the full recurrence on its channels.
"""

import functools

import flax.core.spmd
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from common.checks import check_int

LANES = 128
# Longest time block. At 8 x 128 channels per block that is 1 MiB per f32
# stream, and the ~0.35 us cost of a grid step is small next to the block's
# DMA (~1.5 us for the forward's three streams on v5e).
BLOCK_T = 256
# VMEM per stream block (as f32): the backward double-buffers five streams,
# 10 MiB, inside the 16 MiB default scoped VMEM of v5e and v5p. Wide channel
# blocks (all the rows, when their count is not a multiple of 8) get shorter
# time blocks instead.
BLOCK_BYTES = 1 << 20
# Steps of the in-kernel loop unrolled together (scheduling freedom for the
# loads and stores around the one-vreg dependency chain).
UNROLL = 8


def _layout(T: int, E: int, dtypes, max_block_t: int) -> tuple[int, int, int, int]:
  """(time block, padded T, lanes, rows per block) for (B, T, E) inputs."""
  lanes = LANES if E % LANES == 0 else E
  rows = E // lanes
  # A block's (rows, lanes) must tile by (8, 128) in f32 and (16, 128) in
  # bf16, or be the whole channel axis.
  sublanes = 8 * 4 // min(jnp.dtype(d).itemsize for d in dtypes)
  block_rows = sublanes if rows % sublanes == 0 else rows
  fits = BLOCK_BYTES // (block_rows * lanes * 4)
  block_t = min(T, max_block_t, max(8, 1 << (max(fits, 1).bit_length() - 1)))  # a power of 2
  padded_t = -(-T // block_t) * block_t
  return block_t, padded_t, lanes, block_rows


def _forward_kernel(a_ref, b_ref, h0_ref, h_ref, h_last_ref, h_start_ref, carry_ref):
  """One (batch row, channel block, time block): a, b, h are (Tb, R, L).

  `h_start_ref` keeps the f32 state entering each time block, the h_{t-1} the
  backward pass needs at the block's first step.
  """
  @pl.when(pl.program_id(2) == 0)
  def _():
    carry_ref[...] = h0_ref[...]

  h_start_ref[...] = carry_ref[...]

  def step(t, h_RL):
    h_RL = a_ref[t].astype(jnp.float32) * h_RL + b_ref[t].astype(jnp.float32)
    h_ref[t] = h_RL.astype(h_ref.dtype)
    return h_RL

  carry_ref[...] = jax.lax.fori_loop(0, h_ref.shape[0], step, carry_ref[...],
                                     unroll=min(UNROLL, h_ref.shape[0]))

  @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
  def _():
    h_last_ref[...] = carry_ref[...]


def _backward_kernel(a_ref, dh_ref, h_ref, h_start_ref, dh_last_ref,
                     da_ref, db_ref, dh0_ref, carry_ref):
  """The reverse-time scan of the VJP; time blocks arrive last first.

  With g_t = dL/dh_t (total), g_t = dh_t + a_{t+1} g_{t+1} and
  g_{T-1} = dh_{T-1} + dh_last. The carry is c = a_{t+1} g_{t+1}, what later
  steps send back to h_t; after t = 0 it is a_0 g_0 = dL/dh0. Then
  db_t = g_t and da_t = g_t h_{t-1}.
  """
  @pl.when(pl.program_id(2) == 0)
  def _():
    carry_ref[...] = dh_last_ref[...]

  def step(t, c_RL, h_prev_RL):
    g_RL = dh_ref[t].astype(jnp.float32) + c_RL
    db_ref[t] = g_RL.astype(db_ref.dtype)
    da_ref[t] = (g_RL * h_prev_RL).astype(da_ref.dtype)
    return a_ref[t].astype(jnp.float32) * g_RL

  block_t = h_ref.shape[0]

  def body(i, c_RL):  # t = block_t - 1 ... 1: h_{t-1} is in this block.
    t = block_t - 1 - i
    return step(t, c_RL, h_ref[t - 1].astype(jnp.float32))

  c_RL = jax.lax.fori_loop(0, block_t - 1, body, carry_ref[...],
                           unroll=max(1, min(UNROLL, block_t - 1)))
  carry_ref[...] = step(0, c_RL, h_start_ref[...])  # h_{-1} is the previous block's.

  @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
  def _():
    dh0_ref[...] = carry_ref[...]


def _specs(shape_BTRL, block_t: int, block_rows: int, reverse: bool):
  """BlockSpecs for (B, T, R, L) streams, (B, R, L) states and the
  (B, T blocks, R, L) block-start states, on the grid (B, R blocks, T blocks)."""
  _, T, _, L = shape_BTRL
  last = T // block_t - 1
  k_of = (lambda k: last - k) if reverse else (lambda k: k)
  stream = pl.BlockSpec((pl.Squeezed(), block_t, block_rows, L),
                        lambda b, r, k: (b, k_of(k), r, 0))
  state = pl.BlockSpec((pl.Squeezed(), block_rows, L), lambda b, r, k: (b, r, 0))
  start = pl.BlockSpec((pl.Squeezed(), pl.Squeezed(), block_rows, L),
                       lambda b, r, k: (b, k_of(k), r, 0))
  return stream, state, start


def _call(kernel, args, out_shapes, in_specs, out_specs, grid, block_rows, L,
          flops, interpret):
  """pallas_call of `kernel` with (shape, dtype) `out_shapes`."""
  out_shape = tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in out_shapes)
  touched = [*args, *out_shape]
  return pl.pallas_call(
      kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
      out_specs=out_specs,
      scratch_shapes=[pltpu.VMEM((block_rows, L), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      cost_estimate=pl.CostEstimate(
          flops=flops, transcendentals=0,
          bytes_accessed=sum(x.size * jnp.dtype(x.dtype).itemsize for x in touched)),
      interpret=interpret)(*args)


def _on_tpu_or_interpreted(fn, *args):
  """`fn(*args, interpret=...)`: Mosaic when lowered for TPU (also ahead of
  time from a CPU host), the Pallas interpreter on any other platform."""
  return jax.lax.platform_dependent(
      *args, tpu=functools.partial(fn, interpret=False),
      default=functools.partial(fn, interpret=True))


def _forward(a_BTRL, b_BTRL, h0_BRL, block_t, block_rows, out_dtype, interpret):
  B, T, R, L = a_BTRL.shape
  stream, state, start = _specs(a_BTRL.shape, block_t, block_rows, reverse=False)
  out_shape = (((B, T, R, L), out_dtype), ((B, R, L), jnp.float32),
               ((B, T // block_t, R, L), jnp.float32))
  return _call(_forward_kernel, (a_BTRL, b_BTRL, h0_BRL), out_shape,
               [stream, stream, state], [stream, state, start],
               (B, R // block_rows, T // block_t), block_rows, L,
               flops=2 * a_BTRL.size, interpret=interpret)


def _backward(a_BTRL, dh_BTRL, h_BTRL, h_start_BKRL, dh_last_BRL, block_t,
              block_rows, da_dtype, db_dtype, interpret):
  B, T, R, L = a_BTRL.shape
  stream, state, start = _specs(a_BTRL.shape, block_t, block_rows, reverse=True)
  out_shape = (((B, T, R, L), da_dtype), ((B, T, R, L), db_dtype),
               ((B, R, L), jnp.float32))
  return _call(_backward_kernel, (a_BTRL, dh_BTRL, h_BTRL, h_start_BKRL, dh_last_BRL),
               out_shape, [stream, stream, stream, start, state],
               [stream, stream, state], (B, R // block_rows, T // block_t),
               block_rows, L, flops=4 * a_BTRL.size, interpret=interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _scan_blocks(a_BTRL, b_BTRL, h0_BRL, block_t, block_rows, out_dtype):
  """(h in out_dtype, h_last in f32) of T a multiple of block_t; h0 is f32."""
  return _scan_blocks_fwd(a_BTRL, b_BTRL, h0_BRL, block_t, block_rows, out_dtype)[0]


def _scan_blocks_fwd(a_BTRL, b_BTRL, h0_BRL, block_t, block_rows, out_dtype):
  forward = functools.partial(_forward, block_t=block_t, block_rows=block_rows,
                              out_dtype=out_dtype)
  h_BTRL, h_last_BRL, h_start_BKRL = _on_tpu_or_interpreted(
      forward, a_BTRL, b_BTRL, h0_BRL)
  # The backward needs b's dtype only (for db): a zero-size stand-in.
  b_like = jnp.zeros((0,), b_BTRL.dtype)
  return (h_BTRL, h_last_BRL), (a_BTRL, h_BTRL, h_start_BKRL, b_like)


def _scan_blocks_bwd(block_t, block_rows, out_dtype, residuals, cotangents):
  a_BTRL, h_BTRL, h_start_BKRL, b_like = residuals
  dh_BTRL, dh_last_BRL = cotangents
  backward = functools.partial(_backward, block_t=block_t, block_rows=block_rows,
                               da_dtype=a_BTRL.dtype, db_dtype=b_like.dtype)
  da_BTRL, db_BTRL, dh0_BRL = _on_tpu_or_interpreted(
      backward, a_BTRL, dh_BTRL.astype(out_dtype), h_BTRL, h_start_BKRL,
      dh_last_BRL.astype(jnp.float32))
  return da_BTRL, db_BTRL, dh0_BRL


_scan_blocks.defvjp(_scan_blocks_fwd, _scan_blocks_bwd)


def _local_scan(a_BTE, b_BTE, h0_BE, block_t):
  """The kernel on unsharded (or per-shard) arrays; see `pallas_scan`."""
  B, T, E = a_BTE.shape
  # What linear_scan returns for the same inputs; the state is f32 regardless.
  out_dtype = jnp.result_type(a_BTE.dtype, b_BTE.dtype, h0_BE.dtype)
  block_t, padded_t, L, block_rows = _layout(
      T, E, (a_BTE.dtype, b_BTE.dtype, out_dtype), block_t)
  if padded_t != T:  # a = 1, b = 0 after the end: the state passes through unchanged.
    pad = ((0, 0), (0, padded_t - T), (0, 0))
    a_BTE = jnp.pad(a_BTE, pad, constant_values=1)
    b_BTE = jnp.pad(b_BTE, pad)
  h_BTRL, h_last_BRL = _scan_blocks(
      a_BTE.reshape(B, padded_t, E // L, L), b_BTE.reshape(B, padded_t, E // L, L),
      h0_BE.astype(jnp.float32).reshape(B, E // L, L), block_t, block_rows, out_dtype)
  h_BTE = h_BTRL.reshape(B, padded_t, E)[:, :T]
  return h_BTE, h_last_BRL.reshape(B, E).astype(out_dtype)


def pallas_scan(a_BTE, b_BTE, h0_BE, *, block_t: int = BLOCK_T):
  """h_t = a_t h_{t-1} + b_t with h_{-1} = h0; returns (h_BTE, h_last_BE).

  Any float inputs; the state is f32, outputs have linear_scan's dtype. T is
  cut into blocks of `block_t` steps (the last padded with a = 1, b = 0).
  Inside a mesh with the logical-axis rules active (the train step), each
  shard scans its rows and channels: specs come from the logical names the
  recurrent block constrains its activations to, so no mesh axis is named here.
  """
  check_int("block_t", block_t)
  scan = functools.partial(_local_scan, block_t=block_t)
  mesh = jax.sharding.get_abstract_mesh()
  rules = flax.core.spmd.get_logical_axis_rules()
  # Inside a shard_map (the sequence-parallel scan, `model/scan.py`) the
  # arrays are already this shard's.
  if mesh.empty or not rules or mesh.manual_axes:
    return scan(a_BTE, b_BTE, h0_BE)
  x_spec = nn.logical_to_mesh_axes(("batch", None, "lru"), rules)
  h_spec = nn.logical_to_mesh_axes(("batch", "lru"), rules)
  # check_vma=False: the Pallas interpreter (of the jax pinned in pyproject.toml) loses the varying
  # axes of its scratch and fails the check. Nothing is replicated here: every
  # operand is split over the batch and channel axes alike.
  return jax.shard_map(scan, mesh=mesh, in_specs=(x_spec, x_spec, h_spec),
                       out_specs=(x_spec, h_spec), check_vma=False)(a_BTE, b_BTE, h0_BE)
