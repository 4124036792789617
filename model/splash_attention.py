"""Griffin's attention through JAX's Pallas TPU splash-attention kernel
(`jax.experimental.pallas.ops.tpu.splash_attention`).

The XLA path of `model/attention.py` builds a T x T f32 logits tensor per
query head (or T x 2C blocks when the window is short next to T); splash
attention streams key blocks through VMEM with an online softmax and skips
the blocks the mask rules out, so memory is linear in T and a local window
costs O(T x window). It takes all three of our masks:
- causal local attention (Griffin): `LocalMask` with window (w, 0), the key
  at t - w the oldest visible, as `AttentionBlock._sequence_mask`;
  global (the MQA baseline): `CausalMask`;
- no attention across packed documents: `SegmentIds`, a document index per
  token counted from `segment_pos` (a new document starts where it is 0);
- MQA: `make_splash_mqa`, one K/V head shared by every query head.

The kernel scores q·k without scaling: queries are scaled by H**-0.5 first,
as `AttentionBlock._attend` scales its logits. Off TPU it runs in interpret
mode (the tests' reference check). On TPU, Mosaic refuses bf16 operands
under `jax_default_matmul_precision="highest"` ("Bad lhs type"): compile at
the default precision, as the trainer does.

Under a mesh the kernel runs inside `jax.shard_map` (a pallas_call is not
partitioned by GSPMD): rows split as the batch is, query heads as the
"heads" axis is, and the one K/V head whole on every shard, which is the
paper's layout (§4.1). The kernel's output and log-sum-exp are named
`RESIDUALS` for the remat policy (`model/griffin.py`) to keep.
"""

import concurrent.futures
import functools

import flax.core.spmd
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from model import sequence
from model.scan import target_platform

BLOCK = 512  # query and key block length; smaller rows use one block of T
LANES = 128  # Mosaic's vector lanes: blocks and heads are multiples of them
RESIDUALS = "splash_attention_residuals"


def unsupported(T: int, head_dim: int, block: int = BLOCK) -> str | None:
  """Why the kernel cannot take rows of T tokens and heads of `head_dim`
  (None when it can): it has no partial blocks, and blocks and heads fill
  whole 128-lane vectors."""
  block = min(block, T)
  if T % block or block % LANES:
    return (f"sequence length T={T} does not fill whole kernel blocks: use a multiple "
            f"of {LANES} up to {block}, and of {block} above it")
  if head_dim % LANES:
    return f"head_dim={head_dim} is not a multiple of {LANES}"
  return None


def block_sizes(T: int, block: int = BLOCK) -> splash.BlockSizes:
  """Blocks of min(block, T) tokens, forward and backward; T must be a
  multiple of them (the kernel has no partial blocks)."""
  block = min(block, T)
  if T % block:
    raise ValueError(f"splash attention needs a sequence length that is a multiple of "
                     f"its block of {block} tokens; got T={T}")
  return splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                           block_q_dkv=block, block_kv_dkv=block,
                           block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)


@functools.lru_cache(maxsize=32)
def make_kernel(T: int, num_heads: int, window: int | None, interpret: bool, block: int):
  """The MQA splash kernel of one row: (N, T, H) queries, (T, H) keys and
  values, and SegmentIds. Masks are numpy-built once per shape."""
  one = (splash.CausalMask((T, T)) if window is None
         else splash.LocalMask((T, T), (window, 0), offset=0))
  mask = splash.MultiHeadMask([one] * num_heads)
  # The library makes the mask tables eagerly with jnp.array. On a fresh
  # thread no trace and no mesh is in context (both are thread-local), so they
  # land on this host, never in a trace (the kernel is cached and called from
  # many) nor on the devices of a TPU topology being compiled for from a CPU
  # host; as numpy arrays they are then constants of whatever calls them.
  build = functools.partial(splash.make_splash_mqa_single_device, mask,
                            block_sizes=block_sizes(T, block), interpret=interpret,
                            residual_checkpoint_name=RESIDUALS)
  with concurrent.futures.ThreadPoolExecutor(1) as thread:
    kernel = thread.submit(build).result()
  return jax.tree.map(np.asarray, kernel)


def visited_blocks(T: int, window: int | None, block: int = BLOCK) -> int:
  """(query block, key block) pairs the kernel computes for a row of T
  tokens: those holding any key the causal (local) mask lets a query see.
  Document boundaries are data, so their blocks are computed too."""
  b = min(block, T)
  q_first = np.arange(0, T, b)[:, None]  # first query of each query block
  k_first = np.arange(0, T, b)[None, :]
  # Some key of block k is visible to some query of block q: a key at most
  # the last query, and (local) at least the first query minus the window.
  visible = k_first <= q_first + b - 1
  if window is not None:
    visible &= k_first + b - 1 >= q_first - window
  return int(visible.sum())


def document_ids(segment_pos_BT: jax.Array) -> jax.Array:
  """Token -> index of its document in the row: a new one where segment_pos
  is 0, so tokens of different packed documents never share an id."""
  return jnp.cumsum((segment_pos_BT == 0).astype(jnp.int32), axis=1)


def splash_attend(q_BTNH, k_BTH, v_BTH, segment_pos_BT, window: int | None,
                  interpret: bool = False, block: int = BLOCK):
  """Softmax attention of each query head over the visible keys: the same
  values as `AttentionBlock._attend` under `_sequence_mask`. Unsharded
  arrays (or one shard's)."""
  B, T, N, H = q_BTNH.shape
  kernel = make_kernel(T, N, window, interpret, block)
  scaled_BNTH = (jnp.swapaxes(q_BTNH, 1, 2) * np.asarray(H**-0.5, q_BTNH.dtype))
  ids_BT = document_ids(segment_pos_BT)

  def one_row(q_NTH, k_TH, v_TH, ids_T):
    return kernel(q_NTH, k_TH, v_TH, segment_ids=splash.SegmentIds(q=ids_T, kv=ids_T))

  enc_BNTH = jax.vmap(one_row)(scaled_BNTH, k_BTH, v_BTH, ids_BT)
  return jnp.swapaxes(enc_BNTH, 1, 2).astype(v_BTH.dtype)


def sharded_splash_attend(q_BTNH, k_BTH, v_BTH, segment_pos_BT, window: int | None):
  """`splash_attend` as the model calls it: Mosaic when compiling for TPU
  (also ahead of time from a CPU host), interpreted elsewhere; under a mesh
  with the logical-axis rules active, one kernel per shard of rows and query
  heads (`sequence.shard_map`; time is not split on this path). The K/V head
  enters every heads shard whole; its cotangent is summed over them."""
  interpret = target_platform() != "tpu"

  def attend(q_BTNH, k_BTH, v_BTH, segment_pos_BT):
    return (splash_attend(q_BTNH, k_BTH, v_BTH, segment_pos_BT, window, interpret),)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not flax.core.spmd.get_logical_axis_rules() or mesh.manual_axes:
    return attend(q_BTNH, k_BTH, v_BTH, segment_pos_BT)[0]
  q_names, kv_names = ("batch", "length", "heads", None), ("batch", "length", None)
  return sequence.shard_map(
      attend, in_names=(q_names, kv_names, kv_names, ("batch", "length")),
      out_names=(q_names,))(q_BTNH, k_BTH, v_BTH, segment_pos_BT)[0]
