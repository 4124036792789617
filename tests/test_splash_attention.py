"""Splash attention (model/splash_attention.py) in interpret mode against the
XLA attention of model/attention.py: values and gradients, local windows
shorter and longer than the kernel's block, global attention, and packed
documents (resets, and a row that starts inside a document)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.attention import AttentionBlock
from model.splash_attention import block_sizes, document_ids, splash_attend
from sharding import topologies

B, T, N, H = 2, 256, 2, 128
BLOCK = 128  # two blocks per row, so windows cross block boundaries


def segment_positions():
  """Row 0: documents of 100 and 156 tokens; row 1: the tail of a document
  (from position 40), then documents of 30 and 146 tokens."""
  row0 = np.concatenate([np.arange(100), np.arange(156)])
  row1 = np.concatenate([np.arange(40, 120), np.arange(30), np.arange(146)])
  return jnp.asarray(np.stack([row0, row1]), jnp.int32)


def xla_attention(window):
  """`AttentionBlock`'s own masked softmax attention (its projections unused)."""
  block = AttentionBlock(N * H, H, window=window, rope_max_wavelength=10_000.0,
                         out_init_scale=1.0, dtype=jnp.float32, rngs=nnx.Rngs(0))
  return lambda q, k, v, pos: block._attend(q, k, v, block._sequence_mask(pos))


# 150 > BLOCK binds inside the 156-token document: the window crosses a block boundary.
@pytest.mark.parametrize("window", [32, 150, None], ids=["window_32", "window_150", "global"])
def test_values_and_gradients_equal_the_xla_attention(window):
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (B, T, N, H))
  k = jax.random.normal(keys[1], (B, T, H))
  v = jax.random.normal(keys[2], (B, T, H))
  cotangent = jax.random.normal(keys[3], (B, T, N, H))
  pos = segment_positions()

  def value_and_grads(attend):
    def loss(q, k, v):
      return jnp.sum(attend(q, k, v, pos) * cotangent)
    out = jax.jit(attend)(q, k, v, pos)
    return out, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  splash = lambda q, k, v, pos: splash_attend(q, k, v, pos, window, interpret=True,  # noqa: E731
                                              block=BLOCK)
  out, grads = value_and_grads(splash)
  out_ref, grads_ref = value_and_grads(xla_attention(window))
  # f32; the kernel's online softmax sums in another order (measured: <= 3.5e-6).
  np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-5)
  for grad, grad_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-5)


def test_documents_and_blocks():
  ids = document_ids(segment_positions())
  assert ids[0, 99] != ids[0, 100] and ids[1, 79] != ids[1, 80] and ids[1, 0] == ids[1, 79]
  assert block_sizes(2048).block_q == 512 and block_sizes(256).block_kv == 256
  with pytest.raises(ValueError, match="multiple of its block of 512 tokens; got T=1000"):
    block_sizes(1000)


def test_forward_and_backward_compile_to_mosaic_kernels_for_tpu():
  """Compile-only for one v5e chip: the forward, dq and dkv kernels."""
  one = jax.sharding.SingleDeviceSharding(topologies.get("v5e-8").get_topology_desc().devices[0])
  args = (jax.ShapeDtypeStruct((1, 512, N, H), jnp.bfloat16, sharding=one),
          jax.ShapeDtypeStruct((1, 512, H), jnp.bfloat16, sharding=one),
          jax.ShapeDtypeStruct((1, 512, H), jnp.bfloat16, sharding=one),
          jax.ShapeDtypeStruct((1, 512), jnp.int32, sharding=one))

  def loss(q, k, v, pos):
    return jnp.sum(splash_attend(q, k, v, pos, 128).astype(jnp.float32))

  # The trainer's default precision: Mosaic takes no fp32 contract precision
  # on bf16 operands, and conftest sets "highest" for the CPU numbers.
  with jax.default_matmul_precision("default"):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args)
  assert topologies.compile_only(lowered).as_text().count("tpu_custom_call") == 3
