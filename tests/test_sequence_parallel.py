"""Sequence parallelism (model/sequence.py) on 8 fake CPU devices: with time
split over the mesh's sequence axis, the RG-LRU scan, the Conv1D and local or
global attention give the unsharded results (values and gradients) for packed
documents that cross shard boundaries, and time itself is never gathered."""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.attention import AttentionBlock
from model.config import BlockType, ModelConfig, ScanImpl
from model.griffin import Griffin
from model.scan import get_scan, linear_scan, sequence_parallel_scan
from sharding import rules
from sharding.config import MeshConfig
from sharding.mesh import make_mesh
from tests.test_sharding import COLLECTIVES
from trainer.loss import next_token_loss

B, T = 4, 32
# One scanned (R, A) group (small, for compile time); 4 heads and 4 gate
# blocks split over tensor = 2. The window (6) is longer than a shard at
# sequence = 8 (4 tokens: keys come from two shards back) and shorter at
# sequence = 4 (8 tokens).
GRIFFIN = ModelConfig(vocab_size=64, width=64, depth=2, lru_width=64, head_dim=16,
                      gate_blocks=4, attention_window=6,
                      block_pattern=(BlockType.RECURRENT, BlockType.ATTENTION))
MESHES = {
    "seq8": dict(ici_data=1, ici_sequence=8),  # window halo from 2 shards back
    "seq4_data2": dict(ici_data=2, ici_sequence=4),  # halo from the previous shard
    # T/2 = 16 tokens a shard: the window reaches the only earlier shard, so
    # K/V are all-gathered; heads and RG-LRU channels over tensor.
    "seq2_tensor2_data2": dict(ici_data=2, ici_sequence=2, ici_tensor=2),
}


def batch():
  """Packed rows whose documents start inside shards and on shard boundaries
  (t = 16, and 8 for row 3) and span several shards; row 2 continues a
  document begun before the row (segment_pos starts at 5)."""
  tokens_BT = jax.random.randint(jax.random.key(1), (B, T), 0, GRIFFIN.vocab_size)
  rows = [np.r_[np.arange(5), np.arange(11), np.arange(3), np.arange(13)],
          np.arange(T),
          np.arange(5, 5 + T),
          np.r_[np.arange(8), np.arange(9), np.arange(15)]]
  return tokens_BT, jnp.asarray(np.stack(rows), jnp.int32)


def assert_close(actual, desired, err_msg=""):
  """Equal up to f32 rounding in sums of another order: 1e-5 relative, and
  2e-6 of the array's largest magnitude (at least 1) where values cancel."""
  scale = max(1.0, float(np.max(np.abs(desired))))
  np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=2e-6 * scale, err_msg=err_msg)


def loss_logits_grads(graphdef, params, tokens_BT, segment_pos_BT):
  def loss(params):
    logits_BTV, _ = nnx.merge(graphdef, params)(tokens_BT, segment_pos_BT)
    return next_token_loss(logits_BTV, tokens_BT, segment_pos_BT), logits_BTV
  (loss, logits_BTV), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return loss, logits_BTV, grads


@functools.cache
def unsharded():
  """The model's graphdef and parameters, and (loss, logits, gradients)
  without a mesh."""
  graphdef, params = nnx.split(Griffin(GRIFFIN, nnx.Rngs(0)))
  step = jax.jit(functools.partial(loss_logits_grads, graphdef))
  return graphdef, params, step(params, *batch())


@functools.cache
def sharded(name):
  """(loss, logits, gradients) and the compiled HLO text on mesh `name`."""
  graphdef, params, _ = unsharded()
  mesh = make_mesh(MeshConfig(**MESHES[name]))
  param_shardings = rules.named(mesh, rules.param_specs(params))
  row = rules.batch_sharding(mesh)
  args = (jax.device_put(params, param_shardings), *(jax.device_put(x, row) for x in batch()))
  step = jax.jit(functools.partial(loss_logits_grads, graphdef),
                 in_shardings=(param_shardings, row, row))
  with jax.set_mesh(mesh), rules.activation_rules():
    compiled = step.lower(*args).compile()
    return compiled(*args), compiled.as_text()


@pytest.mark.parametrize("name", list(MESHES))
def test_logits_and_gradients_equal_unsharded(name):
  _, _, (loss_ref, logits_ref, grads_ref) = unsharded()
  (loss, logits, grads), _ = sharded(name)
  # f32 rounding only: sums in another order (the carries' composition, key
  # blocks of another length), as between any two meshes (test_sharding.py).
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
  assert_close(logits, logits_ref)
  jax.tree.map(assert_close, grads, grads_ref)


def test_global_attention_equals_unsharded():
  """Global attention (the MQA baseline's) gathers all keys and values: one
  block at sequence 4 x fsdp 2, values and gradients (parameters, input)."""
  block = AttentionBlock(GRIFFIN.width, GRIFFIN.head_dim, window=None,
                         rope_max_wavelength=10_000.0, out_init_scale=1.0,
                         dtype=jnp.float32, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(block)
  x_BTD = jax.random.normal(jax.random.key(2), (B, T, GRIFFIN.width))
  _, segment_pos_BT = batch()

  def loss(params, x_BTD):
    y_BTD, _ = nnx.merge(graphdef, params)(x_BTD, segment_pos_BT)
    return jnp.sum(jnp.sin(y_BTD)), y_BTD

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  (_, y_ref), grads_ref = step(params, x_BTD)
  with jax.set_mesh(make_mesh(MeshConfig(ici_data=1, ici_fsdp=2, ici_sequence=4))), \
      rules.activation_rules():
    (_, y), grads = step(params, x_BTD)
  assert_close(y, y_ref)
  jax.tree.map(assert_close, grads, grads_ref)


def test_time_is_never_gathered():
  """At sequence = 8 with a window halo, no float activation crosses devices
  whole: the collectives move carries (B, 2P, E), halos (B, W-1, E) and
  (B, T/P, H), and parameter gradients; never a (B, T, .) array."""
  _, text = sharded("seq8")
  pattern = r"= (\([^)]*\)|\S+) (" + "|".join(COLLECTIVES) + r")(?:-start)?\("
  moved = collections.Counter(
      (kind, shape) for shapes, kind in re.findall(pattern, text)
      for shape in re.findall(r"\w+\[[\d,]*\]", shapes))
  E, W, P = GRIFFIN.lru_width, GRIFFIN.conv_width, 8
  assert moved[("all-gather", f"f32[{B},{2 * P},{E}]")] > 0  # the RG-LRU's carries
  assert moved[("collective-permute", f"f32[{B},{W - 1},{E}]")] > 0  # Conv1D halo
  assert moved[("collective-permute", f"f32[{B},{T // P},{GRIFFIN.head_dim}]")] > 0  # K/V
  whole_time = [k for k in moved if re.match(rf"f\d+\[{B},{T}(,|\])", k[1])]
  assert not whole_time, whole_time


def scan_inputs(P, T_local=4, E=8, seed=0):
  """a in (0.5, 1) with resets (a = 0) on shard boundaries and inside shards;
  a large h0, so that a lost initial state shows."""
  ka, kb, kh = jax.random.split(jax.random.key(seed), 3)
  a_BTE = jax.random.uniform(ka, (2, P * T_local, E), minval=0.5, maxval=1.0)
  a_BTE = a_BTE.at[0, jnp.array([T_local, 2 * T_local + 1, 3 * T_local])].set(0.0)
  a_BTE = a_BTE.at[1, T_local * (P - 1)].set(0.0)  # only on the last boundary
  b_BTE = jax.random.normal(kb, a_BTE.shape)
  h0_BE = 3.0 * jax.random.normal(kh, (2, E))
  return a_BTE, b_BTE, h0_BE


@pytest.mark.parametrize("impl", [ScanImpl.LINEAR, ScanImpl.ASSOCIATIVE, ScanImpl.PALLAS],
                         ids=lambda impl: impl.value)
def test_carry_corrected_scan_equals_lax_scan(impl):
  """The scan alone at sequence = 8: values and gradients (a, b, h0) of every
  scan implementation equal one unsharded lax.scan."""
  mesh = make_mesh(MeshConfig(ici_data=1, ici_sequence=8))
  scan = get_scan(impl)

  def loss(scan_fn, a_BTE, b_BTE, h0_BE):
    h_BTE, h_last_BE = scan_fn(a_BTE, b_BTE, h0_BE)
    return jnp.sum(jnp.sin(h_BTE)) + jnp.sum(h_last_BE**2), (h_BTE, h_last_BE)

  grad = lambda fn: jax.jit(jax.value_and_grad(  # noqa: E731
      functools.partial(loss, fn), argnums=(0, 1, 2), has_aux=True))
  args = scan_inputs(8)
  (_, (h_ref, h_last_ref)), grads_ref = grad(linear_scan)(*args)
  with jax.set_mesh(mesh), rules.activation_rules():
    (_, (h, h_last)), grads = grad(functools.partial(sequence_parallel_scan, scan))(*args)
  assert_close(h, h_ref)
  assert_close(h_last, h_last_ref)
  for name, g, g_ref in zip(("da", "db", "dh0"), grads, grads_ref):
    assert_close(g, g_ref, err_msg=name)


def test_bad_lengths_are_named_before_compile():
  graphdef, params, _ = unsharded()
  mesh = make_mesh(MeshConfig(ici_data=1, ici_sequence=8))

  def trace(T, cache=None):
    tokens_BT = jax.ShapeDtypeStruct((B, T), jnp.int32)
    forward = lambda p, t: nnx.merge(graphdef, p)(t, t, cache)  # noqa: E731
    with jax.set_mesh(mesh), rules.activation_rules():
      jax.eval_shape(forward, params, tokens_BT)

  trace(24)  # 3 tokens a shard: the Conv1D's halo of W - 1 = 3 fits
  with pytest.raises(ValueError, match=r"T=36 does not split evenly over the 8 sequence"):
    trace(36)
  with pytest.raises(ValueError, match=r"T=16 .* leaves 2 tokens per shard; the Conv1D"):
    trace(16)
  cache = nnx.merge(graphdef, params).init_cache(B)
  with pytest.raises(ValueError, match="decode under a mesh with sequence size 1"):
    trace(1, cache)
