"""Sharding on 8 fake CPU devices: every mesh gives the single-device numbers,
every parameter lands where the table says, and the paper's tensor-parallel
layout holds (§4.1): the recurrent block communicates exactly like the MLP
block, attention like it plus its K/V head's gradients (XLA and splash
paths), and a whole train step compiled for TPU only all-reduces."""

import collections
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aot import hlo
from model.config import AttentionImpl, ModelConfig
from model.griffin import Griffin
from model.attention import AttentionBlock
from jax.sharding import PartitionSpec as P
from model import layers
from model.layers import MLPBlock, gathered
from model.recurrent import RecurrentBlock
from model.config import AInit, ScanImpl
from sharding import rules, topologies
from sharding.config import MeshConfig
from sharding.mesh import make_mesh
from trainer.config import OptimizerConfig
from trainer.loss import next_token_loss
from trainer.optimizer import make_optimizer
from trainer.state import init_state, plan_state
from trainer.train_step import TrainStep, device_batch

# Divisible by every mesh below: 8 heads of 16, 8 gate blocks of 16, V, D, F.
CONFIG = ModelConfig(vocab_size=256, width=128, depth=4, lru_width=128, head_dim=16,
                     gate_blocks=8, attention_window=8)
OPTIMIZER = make_optimizer(OptimizerConfig(warmup_steps=1), total_steps=10)
B, T = 8, 32
MESHES = {"data8": (8, 1, 1), "fsdp8": (1, 8, 1), "2x2x2": (2, 2, 2), "tensor8": (1, 1, 8)}


def mesh_of(data, fsdp, tensor, devices=None):
  return make_mesh(MeshConfig(ici_data=data, ici_fsdp=fsdp, ici_tensor=tensor), devices)


def batch():
  tokens_BT = jax.random.randint(jax.random.key(3), (B, T), 0, CONFIG.vocab_size)
  segment_pos_BT = jnp.asarray(np.tile(np.r_[np.arange(20), np.arange(12)], (B, 1)), jnp.int32)
  return tokens_BT, segment_pos_BT


def loss_and_grads(mesh, params):
  """One step's loss and gradients with the table's shardings on `mesh`."""
  setup = plan_state(CONFIG, OPTIMIZER, mesh)
  params = jax.device_put(params, setup.shardings.params)
  row = rules.batch_sharding(mesh)
  tokens_BT, segment_pos_BT = (jax.device_put(x, row) for x in batch())

  def loss_fn(params, tokens_BT, segment_pos_BT):
    logits_BTV, _ = nnx.merge(setup.graphdef, params)(tokens_BT, segment_pos_BT)
    return next_token_loss(logits_BTV, tokens_BT, segment_pos_BT)

  fn = jax.jit(jax.value_and_grad(loss_fn), in_shardings=(setup.shardings.params, row, row),
               out_shardings=(None, setup.shardings.params))
  with jax.set_mesh(mesh), rules.activation_rules():
    return fn(params, tokens_BT, segment_pos_BT)


@pytest.fixture(scope="module")
def reference():
  """Parameters, loss and gradients on a single device."""
  params = nnx.state(Griffin(CONFIG, nnx.Rngs(0)))
  loss, grads = loss_and_grads(mesh_of(1, 1, 1, jax.devices()[:1]), params)
  return params, loss, grads


@pytest.mark.parametrize("name", sorted(MESHES))
def test_sharded_step_equals_single_device(reference, name):
  params, expected_loss, expected_grads = reference
  loss, grads = loss_and_grads(mesh_of(*MESHES[name]), params)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, atol=2e-6, rtol=1e-4),
               grads, expected_grads)


def _names_to_spec(variable):
  return rules.spec_for(tuple(variable.get_metadata()["out_sharding"]), "test")


def test_parameters_and_optimizer_state_sharded_as_the_table_says(reference):
  mesh = mesh_of(2, 2, 2)
  setup = plan_state(CONFIG, OPTIMIZER, mesh)
  state = init_state(CONFIG, OPTIMIZER, setup, seed=0)
  _, abstract = nnx.split(nnx.eval_shape(lambda: Griffin(CONFIG, nnx.Rngs(0))))
  adam = state.opt_state[1][0]  # chain(clip, adamw) -> adamw's ScaleByAdamState
  checked = 0
  for (path, variable), (_, param), (_, mu), (_, nu) in zip(
      nnx.to_flat_state(abstract), nnx.to_flat_state(state.params),
      nnx.to_flat_state(adam.mu), nnx.to_flat_state(adam.nu)):
    expected = jax.sharding.NamedSharding(mesh, _names_to_spec(variable))
    for array in (param[...], mu[...], nu[...]):
      assert array.sharding.is_equivalent_to(expected, array.ndim), path
    checked += 1
  assert checked == len(jax.tree.leaves(abstract)) > 30


def test_train_step_donates_and_matches_single_device(reference):
  params, expected_loss, _ = reference
  mesh = mesh_of(2, 2, 2)
  setup = plan_state(CONFIG, OPTIMIZER, mesh)
  state = init_state(CONFIG, OPTIMIZER, setup, seed=0)
  state = state._replace(params=jax.device_put(params, setup.shardings.params))
  tokens_BT, segment_pos_BT = (np.asarray(x) for x in batch())
  step = TrainStep(setup, OPTIMIZER, mesh)
  new_state, metrics = step(state, *device_batch(
      rules.batch_sharding(mesh), {"tokens": tokens_BT, "segment_pos": segment_pos_BT}))
  np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-6)
  assert int(new_state.step) == 1
  assert jax.tree.leaves(state.params)[0].is_deleted()  # donated


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")


def _collectives(block_fn, params, x_BTD, mesh):
  """Collective ops by kind in the compiled forward+backward of one block."""
  w_BTD = jax.random.normal(jax.random.key(9), x_BTD.shape)

  def loss(params, x_BTD):
    return jnp.sum(block_fn(params, x_BTD) * w_BTD)

  with jax.set_mesh(mesh), rules.activation_rules():
    # value_and_grad: the forward's own collective must survive DCE.
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    text = step.lower(params, x_BTD).compile().as_text()
  # "%x = <shape or (tuple of shapes)> all-reduce(...". XLA's combiner merges
  # independent reductions (here forward and backward) into one tuple op, so
  # count the reduced arrays: (kind, shape) for each operand.
  # Groups of one device (a psum over an axis of size 1) move nothing.
  pattern = r"= (\([^)]*\)|\S+) (" + "|".join(COLLECTIVES) + r")(?:-start)?\("
  return collections.Counter(
      (kind, shape) for line in text.splitlines()
      for shapes, kind in re.findall(pattern, line) if len(hlo.first_group(line, 8)) > 1
      for shape in re.findall(r"\w+\[[\d,]*\]", shapes))


def _block_collectives(blocks: dict, x_BTD, mesh) -> dict:
  """`_collectives` of each block ("mlp" takes x alone; temporal blocks take
  segment positions of one document a row too), its parameters sharded as
  the table says."""
  B_, T_ = x_BTD.shape[:2]
  segment_pos_BT = jnp.broadcast_to(jnp.arange(T_), (B_, T_))
  counts = {}
  for name, block in blocks.items():
    graphdef, params = nnx.split(block)
    params = jax.device_put(params, rules.named(mesh, rules.param_specs(params)))
    if name == "mlp":
      fn = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731
    else:
      fn = lambda p, x: nnx.merge(graphdef, p)(x, segment_pos_BT)[0]  # noqa: E731
    counts[name] = _collectives(fn, params, x_BTD, mesh)
  return counts


def test_recurrent_block_communicates_like_the_mlp_block():
  """Tensor-parallel over 8 devices: both blocks issue the same collectives
  (one all-reduce forward, one backward), and the RG-LRU's activations are
  never all-gathered."""
  mesh = mesh_of(1, 1, 8)
  dtype = jnp.float32
  rngs = nnx.Rngs(0)
  blocks = {
      "mlp": MLPBlock(CONFIG.width, CONFIG.mlp_width, gelu_tanh=True,
                      out_init_scale=1.0, dtype=dtype, rngs=rngs),
      "recurrent": RecurrentBlock(
          CONFIG.width, CONFIG.lru_width, conv_width=4, gate_blocks=8, c=8.0,
          a_init=AInit.PAPER, scan_impl=ScanImpl.LINEAR, gelu_tanh=True,
          out_init_scale=1.0, dtype=dtype, rngs=rngs)}
  x_BTD = jax.device_put(jax.random.normal(jax.random.key(1), (B, T, CONFIG.width)),
                         rules.batch_sharding(mesh))
  counts = _block_collectives(blocks, x_BTD, mesh)
  activation = f"f32[{B},{T},{CONFIG.width}]"
  assert counts["mlp"] == {("all-reduce", activation): 2}, counts  # forward + backward
  assert counts["recurrent"] == counts["mlp"], counts


@pytest.mark.parametrize("impl, width, head_dim, T_, window, kv_elements", [
    # The XLA path in blocks of C = 8 queries against 2C keys: the K/V head's
    # gradients are reduced in that form, (B T/C, 2C, H), twice (B, T, H).
    (AttentionImpl.XLA, 128, 16, T, 8, B * T * 2 * 16),
    (AttentionImpl.XLA, 128, 16, T, 16, B * T * 16),  # the T x T mask
    # Splash (interpreted): heads of 128 lanes, rows of one 128-token block.
    (AttentionImpl.SPLASH, 1024, 128, 128, 48, B * 128 * 128),
], ids=["xla_blocked", "xla", "splash"])
def test_attention_block_communicates_like_the_mlp_block(impl, width, head_dim, T_, window,
                                                         kv_elements):
  """Tensor-parallel over 8 devices, one query head a device: the MLP block's
  collectives (one all-reduce forward, one backward) and the reductions of
  the replicated K/V head's two gradients (each shard's query heads add to
  them), 1/N of an activation each (in whatever layout XLA picks); nothing
  gathered."""
  mesh = mesh_of(1, 1, 8)
  rngs = nnx.Rngs(0)
  mlp = MLPBlock(width, 3 * width, gelu_tanh=True, out_init_scale=1.0, dtype=jnp.float32,
                 rngs=rngs)
  attention = AttentionBlock(width, head_dim, window=window, rope_max_wavelength=10_000.0,
                             out_init_scale=1.0, dtype=jnp.float32, rngs=rngs, impl=impl)
  x_BTD = jax.device_put(jax.random.normal(jax.random.key(1), (B, T_, width)),
                         rules.batch_sharding(mesh))
  counts = _block_collectives({"mlp": mlp, "attention": attention}, x_BTD, mesh)
  assert counts["mlp"] == {("all-reduce", f"f32[{B},{T_},{width}]"): 2}, counts
  extra = counts["attention"] - counts["mlp"]
  assert counts["attention"] - extra == counts["mlp"], counts
  elements = [math.prod(map(int, shape[4:-1].split(","))) for kind, shape in
              extra.elements() if kind == "all-reduce" and shape.startswith("f32")]
  assert sorted(elements) == [kv_elements] * 2 and len(elements) == extra.total(), counts


def test_train_step_layer_groups_communicate_as_the_paper_layout():
  """The whole train step compiled for a 4-chip v5e, tensor-parallel (no data
  or fsdp axis), with what runs on TPU: the Pallas RG-LRU and splash kernels.
  Every collective is an all-reduce (no gather anywhere, so none inside the
  RG-LRU or attention), and each scanned (R, R, A) group moves per run:
    forward: one activation per block, 3 temporal + 3 MLP;
    backward: the remat recompute's 5 (the group's last MLP output is not
      needed), the input gradient of each of the 6 blocks, and the K/V
      head's two gradients."""
  config = ModelConfig(vocab_size=128, width=512, depth=6, lru_width=256, head_dim=128,
                       gate_blocks=4, attention_window=64, compute_dtype="bfloat16")
  rows, T_ = 4, 128
  devices = topologies.get("v5e-4").get_topology_desc().devices
  mesh = mesh_of(1, 1, 4, devices)
  setup = plan_state(config, OPTIMIZER, mesh)
  state = jax.eval_shape(lambda: init_state(config, OPTIMIZER, setup, seed=0))
  # The trainer's precision (Mosaic takes bf16 operands only at "default").
  with jax.default_matmul_precision("default"):
    lowered = TrainStep(setup, OPTIMIZER, mesh).lower(state, (rows, T_))
  text = topologies.compile_only(lowered).as_text()
  assert any(call.name.startswith("splash_mqa_fwd") for call in hlo.kernel_calls(text))
  moved = [c for c in hlo.collectives(text, 4) if len(c.group) > 1]
  assert {c.kind for c in moved} == {"all-reduce"}, moved
  per_loop = collections.Counter()
  for c in moved:
    if c.in_loop:
      assert c.runs == config.num_groups
      per_loop[c.computation] += c.full_bytes
  activation, kv = rows * T_ * config.width * 2, rows * T_ * config.head_dim * 2  # bf16
  assert sorted(per_loop.values()) == [6 * activation, 11 * activation + 2 * kv], per_loop


def test_layers_use_weights_gathered_over_the_batch_axes_only():
  """ZeRO-3 (model.layers.gathered): a weight stored split over fsdp (with
  the batch) and tensor is used whole over fsdp and still split over
  tensor, in the compute dtype; a scanned layer's slice of a stacked weight
  ("layers" first) the same."""
  mesh = mesh_of(2, 2, 2)
  up = layers.param(jnp.zeros((128, 2, 64)), ("embed", None, "mlp"))
  stacked = nnx.Param(jnp.zeros((128, 64)), out_sharding=("layers", "embed", "mlp"),
                       eager_sharding=False)
  with jax.set_mesh(mesh), rules.activation_rules():
    for weight, spec in ((up, P(None, None, "tensor")), (stacked, P(None, "tensor"))):
      jaxpr = jax.make_jaxpr(lambda: gathered(weight, jnp.bfloat16))()
      [constraint] = [e for e in jaxpr.eqns if e.primitive.name == "sharding_constraint"]
      assert constraint.params["sharding"].spec == spec
      assert constraint.invars[0].aval.dtype == jnp.bfloat16  # cast, then gathered
  assert gathered(up, jnp.bfloat16).dtype == jnp.bfloat16  # no mesh: the cast alone


def test_bad_meshes_and_shapes_are_named_before_compile():
  with pytest.raises(ValueError, match="multiply to 12, not to the 8 devices"):
    mesh_of(3, 2, 2)
  with pytest.raises(ValueError, match="'heads' dimension 2 does not divide"):
    plan_state(ModelConfig(vocab_size=256, width=128, depth=3, lru_width=128, head_dim=64,
                           gate_blocks=8), OPTIMIZER, mesh_of(1, 1, 8))
  with pytest.raises(ValueError, match="'gate_block' dimension 4 does not divide"):
    plan_state(ModelConfig(vocab_size=256, width=128, depth=3, lru_width=128, head_dim=16,
                           gate_blocks=4), OPTIMIZER, mesh_of(1, 1, 8))
  with pytest.raises(ValueError, match="global_batch_size=12 is not divisible by the 8"):
    rules.check_batch_divisible(12, mesh_of(2, 4, 1).shape)


def test_unannotated_or_unmapped_parameter_is_an_error():
  class Bare(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.zeros((4, 4)))
  with pytest.raises(ValueError, match="w has no logical axis names"):
    rules.param_specs(nnx.state(Bare()))

  class Unmapped(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.zeros((4, 4)), out_sharding=("embed", "experts"),
                         eager_sharding=False)
  with pytest.raises(ValueError, match=r"logical axes \['experts'\] are not in"):
    rules.param_specs(nnx.state(Unmapped()))
