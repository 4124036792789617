"""Splash attention (model/splash_attention.py) in interpret mode against the
XLA attention of model/attention.py: values and gradients, local windows
shorter and longer than the kernel's block, global attention, and packed
documents (resets, and a row that starts inside a document); then in the
model, on one device and sharded, and how `attention_impl` picks it. (The
train step with the Mosaic kernels compiled for TPU: tests/test_aot.py.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aot import hlo, kernel_cost
from model.attention import AttentionBlock
from model.config import AttentionImpl, BlockType, ModelConfig, ScanImpl
from model.griffin import Griffin
from model.splash_attention import block_sizes, document_ids, splash_attend, unsupported
from sharding import rules, topologies
from sharding.config import MeshConfig
from sharding.mesh import make_mesh
from trainer.config import OptimizerConfig
from trainer.loss import next_token_loss
from trainer.optimizer import make_optimizer
from trainer.state import plan_state
from tests.test_pallas_scan import _tpu_mesh

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
  text = topologies.compile_only(lowered).as_text()
  assert text.count("tpu_custom_call") == 3
  # What the roofline reads off it (aot/kernel_cost.py): one 512-token block
  # pair per head; 2 + 3 + 4 matmuls of 2 x 512 x 512 x H FLOPs.
  calls = hlo.kernel_calls(text)
  assert sorted(call.name.split("_")[2] for call in calls) == ["dkv", "dq", "fwd"]
  assert sum(kernel_cost.kernel_cost(call, 128)[0] for call in calls) == N * 9 * 2 * 512**2 * H


# A Griffin whose attention the kernel can take: heads of 128 lanes, rows of
# one 128-token block; two query heads, so a tensor axis of 2 splits them.
MODEL = ModelConfig(vocab_size=64, width=256, depth=2, lru_width=128, head_dim=128,
                    gate_blocks=4, block_pattern=(BlockType.RECURRENT, BlockType.ATTENTION),
                    attention_window=48, scan_impl=ScanImpl.LINEAR,
                    attention_impl=AttentionImpl.XLA)
MODEL_B, MODEL_T = 4, 128


def model_loss_and_grads(config, mesh_shape):
  """Loss and gradients of one batch, on a data x fsdp x tensor mesh of the
  CPU devices with the rules table's shardings."""
  data, fsdp, tensor = mesh_shape
  mesh = make_mesh(MeshConfig(ici_data=data, ici_fsdp=fsdp, ici_tensor=tensor),
                   jax.devices()[:data * fsdp * tensor])
  setup = plan_state(config, make_optimizer(OptimizerConfig(warmup_steps=1), 10), mesh)
  params = jax.device_put(nnx.state(Griffin(config, nnx.Rngs(0))), setup.shardings.params)
  tokens_BT = jax.random.randint(jax.random.key(3), (MODEL_B, MODEL_T), 0, config.vocab_size)
  pos_BT = np.tile(np.r_[np.arange(70), np.arange(58)], (MODEL_B, 1))
  row = rules.batch_sharding(mesh)

  def loss_fn(params, tokens_BT, segment_pos_BT):
    logits_BTV, _ = nnx.merge(setup.graphdef, params)(tokens_BT, segment_pos_BT)
    return next_token_loss(logits_BTV, tokens_BT, segment_pos_BT)

  with jax.set_mesh(mesh), rules.activation_rules():
    return jax.jit(jax.value_and_grad(loss_fn))(
        params, jax.device_put(tokens_BT, row), jax.device_put(jnp.asarray(pos_BT), row))


@pytest.fixture(scope="module")
def xla_model():
  return model_loss_and_grads(MODEL, (1, 1, 1))


# 2 x 1 x 2: rows over data, query heads over tensor, the K/V head on both.
@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 1, 2)], ids=["one_device", "2x1x2"])
def test_griffin_with_splash_equals_xla(xla_model, mesh_shape):
  loss, grads = model_loss_and_grads(
      dataclasses.replace(MODEL, attention_impl=AttentionImpl.SPLASH), mesh_shape)
  expected_loss, expected_grads = xla_model
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, atol=2e-6, rtol=1e-4),
               grads, expected_grads)


def _uses_kernel(impl, T, mesh=None):
  block = AttentionBlock(256, 128, window=48, rope_max_wavelength=10_000.0,
                         out_init_scale=1.0, dtype=jnp.float32, rngs=nnx.Rngs(0), impl=impl)
  x = jnp.zeros((8, T, 256))
  pos = jnp.broadcast_to(jnp.arange(T), (8, T))
  if mesh is None:
    return "pallas_call" in str(jax.make_jaxpr(lambda x: block(x, pos)[0])(x))
  with jax.set_mesh(mesh), rules.activation_rules():
    return "pallas_call" in str(jax.make_jaxpr(lambda x: block(x, pos)[0])(x))


def test_auto_picks_splash_for_tpu_only_where_it_fits():
  tpu = _tpu_mesh("v5e-8", (2, 2, 1, 2))
  assert _uses_kernel(AttentionImpl.AUTO, 256, tpu)
  assert not _uses_kernel(AttentionImpl.AUTO, 256)  # CPU: the XLA einsums
  assert not _uses_kernel(AttentionImpl.AUTO, 200, tpu)  # no whole blocks: XLA
  assert not _uses_kernel(AttentionImpl.XLA, 256, tpu)
  assert _uses_kernel(AttentionImpl.SPLASH, 256)  # interpreted
  assert unsupported(2048, 128) is None and unsupported(384, 128) is None
  assert "head_dim=64" in unsupported(2048, 64)


def test_splash_refuses_shapes_it_cannot_take():
  with pytest.raises(ValueError, match=r"attention_impl=splash: sequence length T=200 does "
                                       r"not fill whole kernel blocks.*attention_impl=auto"):
    _uses_kernel(AttentionImpl.SPLASH, 200)
