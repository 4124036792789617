"""Compile-only memory of one attention layer's forward and backward on a TPU
chip: the XLA path of model/attention.py against splash attention
(model/splash_attention.py), on this host (no TPU needed; libtpu compiles).

    python -m aot.attention_memory [--topologies=v5e-8,v5p-8] [--batch=2] \\
        [--seq_len=2048] [--heads=8] [--head_dim=128] [--window=1024]

Each row: jit(grad) of the sum of the attention output with respect to q, k
and v, bf16 inputs, on one chip of the topology; XLA's temporary bytes
(`memory_analysis().temp_size_in_bytes`) and the Mosaic kernels in the
compiled HLO (splash: forward, dq, dkv).
"""

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from common import cli
from model.attention import AttentionBlock
from model.splash_attention import splash_attend
from sharding import topologies

_TOPOLOGIES = flags.DEFINE_list("topologies", ["v5e-8", "v5p-8"], "TPU types, one chip each.")
_BATCH = flags.DEFINE_integer("batch", 2, "Rows.", lower_bound=1)
_SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "Tokens per row.", lower_bound=1)
_HEADS = flags.DEFINE_integer("heads", 8, "Query heads (one K/V head).", lower_bound=1)
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head width.", lower_bound=1)
_WINDOW = flags.DEFINE_integer("window", 1024, "Local window; 0 = global.", lower_bound=0)


def measure(name: str, attend) -> tuple[float, int]:
  """(temporary MiB, Mosaic kernels) of grad(sum(attend(q, k, v, pos)))."""
  device = topologies.get(name).get_topology_desc().devices[0]
  one = jax.sharding.SingleDeviceSharding(device)
  B, T, N, H = _BATCH.value, _SEQ_LEN.value, _HEADS.value, _HEAD_DIM.value
  args = (jax.ShapeDtypeStruct((B, T, N, H), jnp.bfloat16, sharding=one),
          jax.ShapeDtypeStruct((B, T, H), jnp.bfloat16, sharding=one),
          jax.ShapeDtypeStruct((B, T, H), jnp.bfloat16, sharding=one),
          jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=one))

  def loss(q, k, v, pos):
    return jnp.sum(attend(q, k, v, pos).astype(jnp.float32))

  compiled = topologies.compile_only(jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args))
  return (compiled.memory_analysis().temp_size_in_bytes / 2**20,
          compiled.as_text().count("tpu_custom_call"))


def main():
  window = _WINDOW.value or None
  block = nnx.eval_shape(lambda: AttentionBlock(
      _HEADS.value * _HEAD_DIM.value, _HEAD_DIM.value, window=window,
      rope_max_wavelength=10_000.0, out_init_scale=1.0, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  paths = {"XLA (model/attention.py)": lambda q, k, v, pos: block._attend(
               q, k, v, block._sequence_mask(pos)),
           "splash": lambda q, k, v, pos: splash_attend(q, k, v, pos, window)}
  print(f"B={_BATCH.value} T={_SEQ_LEN.value} N={_HEADS.value} H={_HEAD_DIM.value} "
        f"window={window or 'global'}, bf16, forward + backward, one chip")
  print("| TPU | attention | temporary MiB | Mosaic kernels |\n|---|---|---:|---:|")
  for name in _TOPOLOGIES.value:
    topologies.get(name)  # an unknown type is named before any compile
    for path, attend in paths.items():
      mib, kernels = measure(name, attend)
      print(f"| {name} | {path} | {mib:,.1f} | {kernels} |")


if __name__ == "__main__":
  cli.run(main)
