"""FLOPs and HBM bytes of the Pallas TPU kernels that give XLA no cost
estimate, for the roofline (`aot/variants.py`).

JAX's splash-attention kernels (`model/splash_attention.py`) reach the
compiled HLO as `tpu_custom_call`s named splash_mqa_{fwd,dq,dkv}_...; XLA's
cost_analysis counts their operands and outputs once and about none of their
FLOPs. Each kernel walks the (query block, key block) pairs its mask leaves
(`visited_blocks`), per row and query head, and in every pair:
  fwd: q k^T and p v, 2 matmuls; streams the key and value blocks;
  dq:  q k^T, do v^T and ds k, 3 matmuls; streams the key and value blocks;
  dkv: q k^T, do v^T, p^T do and ds^T q, 4 matmuls; streams the query and
       output-gradient blocks and their f32 log-sum-exp and delta rows;
each matmul 2 x block_q x block_kv x H FLOPs. The streamed blocks are added to
XLA's bytes; the first pass over a streamed operand is then counted twice (a
small overlap: once in XLA's count of the call's operands). The Pallas RG-LRU
kernel gives its own estimate and is not priced here.
"""

import math

from aot.hlo import ITEM_BYTES, KernelCall
from model import splash_attention

_SPLASH = {"splash_mqa_fwd": 2, "splash_mqa_dq": 3, "splash_mqa_dkv": 4}  # matmuls per pair


def _splash_kind(name: str) -> str | None:
  return next((kind for kind in _SPLASH if name.startswith(kind + "_")), None)


def kernel_cost(call: KernelCall, attention_window: int | None) -> tuple[float, float]:
  """(FLOPs, streamed HBM bytes) of one run of `call` on one chip; (0, 0)
  for a kernel that gives XLA its own estimate. `attention_window` is the
  model's (None = global), which the kernel's mask was built from."""
  kind = _splash_kind(call.name)
  if kind is None:
    return 0.0, 0.0
  # The queries: the first float operand of rank >= 3, (rows x heads..., T, H).
  dtype, dims = next((d, s) for d, s in call.operands
                     if d.startswith(("f", "bf")) and len(s) >= 3)
  *rows_heads, T, H = dims
  block = min(splash_attention.BLOCK, T)
  pairs = math.prod(rows_heads) * splash_attention.visited_blocks(T, attention_window)
  flops = pairs * _SPLASH[kind] * 2 * block * block * H
  streamed = 2 * block * H * ITEM_BYTES[dtype]
  if kind == "splash_mqa_dkv":  # and the f32 log-sum-exp and delta rows
    streamed += 2 * block * 4
  return float(flops), float(pairs * streamed)
