"""The Pallas RG-LRU kernel (model/pallas_scan.py) against linear_scan, run by
the Pallas interpreter on CPU: values and gradients, dtypes, resets, padding,
sharding. (The train step with the Mosaic kernel compiled for TPU topologies
ahead of time: tests/test_aot.py.)"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import ScanImpl
from model.pallas_scan import pallas_scan
from model.scan import auto_scan, get_scan, linear_scan, target_platform
from sharding import rules, topologies
from sharding.config import AXES
from tests.test_model import TINY, loss_and_grad

BF16_EPS = 2.0**-8  # bf16 keeps 8 significant bits: rounding errs by <= 2^-8 relative.


def inputs(B, T, E, dtype=jnp.float32, h0_dtype=jnp.float32, seed=0):
  """a in (0.5, 1) with document resets (a = 0) at t = 0, 5 and 37 (mod T) of row 0."""
  ka, kb, kh = jax.random.split(jax.random.key(seed), 3)
  a_BTE = jax.random.uniform(ka, (B, T, E), minval=0.5, maxval=1.0)
  a_BTE = a_BTE.at[0, jnp.array([0, 5, 37]) % T].set(0.0)
  b_BTE = jax.random.normal(kb, (B, T, E))
  h0_BE = 3.0 * jax.random.normal(kh, (B, E))  # large, so a lost h0 shows
  return a_BTE.astype(dtype), b_BTE.astype(dtype), h0_BE.astype(h0_dtype)


def value_and_vjp(scan, a_BTE, b_BTE, h0_BE, seed=1):
  """(h, h_last) and the gradients w.r.t. (a, b, h0) for fixed random
  cotangents of both outputs (in the outputs' dtype)."""
  (h_BTE, h_last_BE), vjp = jax.jit(lambda *x: jax.vjp(scan, *x))(a_BTE, b_BTE, h0_BE)
  k1, k2 = jax.random.split(jax.random.key(seed))
  dh_BTE = jax.random.normal(k1, h_BTE.shape).astype(h_BTE.dtype)
  dh_last_BE = jax.random.normal(k2, h_last_BE.shape).astype(h_last_BE.dtype)
  return (h_BTE, h_last_BE), jax.jit(vjp)((dh_BTE, dh_last_BE))


def f32(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


def _tpu_mesh(name, shape):
  """A data x fsdp x sequence x tensor mesh over the fake devices of a TPU topology."""
  devices = topologies.get(name).get_topology_desc().devices
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


@pytest.mark.parametrize("B, T, E, block_t", [
    (2, 64, 256, 16),  # four time blocks, two 128-lane rows of channels
    (2, 100, 256, 32),  # T not a multiple of the block: padded to 128
    (2, 24, 96, 256),  # E not a multiple of 128: one row of 96 lanes
    (2, 1, 256, 256),  # one step, as in decoding
])
def test_f32_equals_linear_scan(B, T, E, block_t):
  args = inputs(B, T, E)
  (h, h_last), grads = value_and_vjp(
      functools.partial(pallas_scan, block_t=block_t), *args)
  (h_ref, h_last_ref), grads_ref = value_and_vjp(linear_scan, *args)
  assert h.dtype == h_last.dtype == jnp.float32
  # The same f32 operations in the same order. Not always bit-equal: the CPU
  # compiler fuses some multiply-adds (FMA, one rounding) in one program and
  # not the other (with --xla_cpu_max_isa=SSE4_2 they are bit-equal).
  np.testing.assert_allclose(h, h_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(h_last, h_last_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(h_last, h[:, -1], rtol=0, atol=0)
  for name, g, g_ref in zip(("da", "db", "dh0"), grads, grads_ref):
    assert g.dtype == g_ref.dtype, name
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6, err_msg=name)


def test_bf16_inputs_with_f32_state_equal_linear_scan():
  """bf16 a, b with the model's f32 h0: linear_scan's carry is f32 too, so both
  compute the same f32 values; outputs f32, gradients in the inputs' dtypes."""
  args = inputs(2, 64, 256, dtype=jnp.bfloat16)
  (h, h_last), grads = value_and_vjp(functools.partial(pallas_scan, block_t=16), *args)
  (h_ref, h_last_ref), grads_ref = value_and_vjp(linear_scan, *args)
  assert h.dtype == h_last.dtype == jnp.float32
  np.testing.assert_allclose(h, h_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(h_last, h_last_ref, rtol=1e-6, atol=1e-6)
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16, jnp.float32]
  for name, g, g_ref in zip(("da", "db", "dh0"), grads, grads_ref):
    assert g.dtype == g_ref.dtype, name
    # da, db: (nearly) equal f32 values rounded to bf16, so at most one bf16
    # ulp (<= 2^-7 relative) apart.
    rtol = 2 * BF16_EPS if g.dtype == jnp.bfloat16 else 1e-6
    np.testing.assert_allclose(f32(g), f32(g_ref), rtol=rtol, atol=1e-6, err_msg=name)


def test_all_bf16_accumulates_in_f32():
  """All-bf16 inputs give bf16 outputs; the state stays f32 (linear_scan's
  would be bf16), so each output is the f32 result rounded once."""
  args = inputs(2, 128, 256, dtype=jnp.bfloat16, h0_dtype=jnp.bfloat16)
  (h, h_last), grads = value_and_vjp(functools.partial(pallas_scan, block_t=32), *args)
  assert h.dtype == h_last.dtype == jnp.bfloat16
  assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
  # Reference: the same bf16 numbers and cotangents, scanned in f32.
  (h_ref, h_last_ref), vjp = jax.vjp(linear_scan, *f32(args))
  k1, k2 = jax.random.split(jax.random.key(1))  # value_and_vjp's cotangents
  cotangents = (jax.random.normal(k1, h.shape).astype(jnp.bfloat16),
                jax.random.normal(k2, h_last.shape).astype(jnp.bfloat16))
  da_ref, db_ref, dh0_ref = vjp(f32(cotangents))
  np.testing.assert_allclose(f32(h), h_ref, rtol=BF16_EPS, atol=0)
  np.testing.assert_allclose(f32(h_last), h_last_ref, rtol=BF16_EPS, atol=0)
  np.testing.assert_allclose(f32(grads[1]), db_ref, rtol=BF16_EPS, atol=0)
  np.testing.assert_allclose(f32(grads[2]), dh0_ref, rtol=BF16_EPS, atol=0)
  # da_t = g_t h_{t-1} reads the saved bf16 h: two roundings.
  np.testing.assert_allclose(f32(grads[0]), da_ref, rtol=2 * BF16_EPS, atol=0)
  # An all-bf16 linear_scan rounds its state every step and drifts further.
  h_bf16, _ = jax.jit(linear_scan)(*args)
  assert np.abs(f32(h_bf16) - h_ref).max() > np.abs(f32(h) - h_ref).max()


def test_sharded_equals_unsharded():
  """Under a data x fsdp x tensor mesh and the rules table, as in the train
  step: each shard scans its own rows and channels, with no communication."""
  mesh = jax.make_mesh((2, 2, 1, 2), AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))
  args = inputs(4, 32, 256)
  scan = functools.partial(pallas_scan, block_t=16)

  def loss(a_BTE, b_BTE, h0_BE):
    h_BTE, h_last_BE = scan(a_BTE, b_BTE, h0_BE)
    return jnp.sum(jnp.sin(h_BTE)) + jnp.sum(h_last_BE**2)

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  with jax.set_mesh(mesh), rules.activation_rules():
    compiled = step.lower(*args).compile()
    value, grads = compiled(*args)
  value_ref, grads_ref = step(*args)  # no mesh: one plain call
  np.testing.assert_allclose(value, value_ref, rtol=1e-6)
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)
  hlo = compiled.as_text()
  assert "all-gather" not in hlo and "all-to-all" not in hlo


def test_auto_is_linear_off_tpu_and_pallas_for_a_tpu_mesh():
  assert get_scan(ScanImpl.AUTO) is auto_scan
  assert get_scan(ScanImpl.PALLAS) is pallas_scan
  args = inputs(8, 16, 256)
  assert target_platform() == "cpu"
  assert "pallas_call" not in str(jax.make_jaxpr(auto_scan)(*args))
  with jax.set_mesh(_tpu_mesh("v5e-8", (2, 2, 1, 2))), rules.activation_rules():
    assert target_platform() == "tpu"
    assert "pallas_call" in str(jax.make_jaxpr(auto_scan)(*args))


def test_bad_block_size_is_named():
  with pytest.raises(ValueError, match="block_t=0"):
    pallas_scan(*inputs(2, 8, 128), block_t=0)


def test_tiny_griffin_loss_and_grads_equal_linear():
  loss, grads = loss_and_grad(TINY)
  loss_pallas, grads_pallas = loss_and_grad(dataclasses.replace(TINY, scan_impl=ScanImpl.PALLAS))
  np.testing.assert_allclose(loss_pallas, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
               grads_pallas, grads)


# Ahead-of-time compiles for TPU: Mosaic checks tiling, alignment and VMEM.

@pytest.mark.parametrize("dtype, h0_dtype, T", [
    (jnp.float32, jnp.float32, 1000),  # 4 time blocks, the last padded
    (jnp.bfloat16, jnp.float32, 512),  # bf16 streams, 16-row blocks
    (jnp.bfloat16, jnp.bfloat16, 256),  # bf16 outputs
])
def test_kernel_compiles_for_v5p(dtype, h0_dtype, T):
  """Forward and backward kernels at a production-like width (2048 channels
  per shard: 16 rows of 128 lanes), through Mosaic."""
  mesh = _tpu_mesh("v5p-8", (2, 1, 1, 2))
  x = jax.sharding.NamedSharding(mesh, rules.spec_for(("batch", None, "lru"), "a, b"))
  h = jax.sharding.NamedSharding(mesh, rules.spec_for(("batch", "lru"), "h0"))
  B, E = 4, 4096
  args = (jax.ShapeDtypeStruct((B, T, E), dtype, sharding=x),
          jax.ShapeDtypeStruct((B, T, E), dtype, sharding=x),
          jax.ShapeDtypeStruct((B, E), h0_dtype, sharding=h))

  def loss(*args):
    h_BTE, h_last_BE = pallas_scan(*args)
    return jnp.sum(h_BTE.astype(jnp.float32)) + jnp.sum(h_last_BE.astype(jnp.float32))

  with jax.set_mesh(mesh), rules.activation_rules():
    compiled = topologies.compile_only(
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args))
  hlo = compiled.as_text()
  assert hlo.count("tpu_custom_call") == 2  # forward and backward, both Mosaic
  # The cost estimates reach XLA: at least the kernels' 6 FLOPs per element.
  padded_t = -(-T // 256) * 256
  assert compiled.cost_analysis()["flops"] >= 6 * (B // 2) * padded_t * (E // 2)
