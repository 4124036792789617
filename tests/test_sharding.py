"""Sharding on 8 fake CPU devices: every mesh gives the single-device numbers,
every parameter lands where the table says, and the recurrent block
communicates exactly like the MLP block (paper §4.1)."""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.config import ModelConfig
from model.griffin import Griffin
from model.layers import MLPBlock
from model.recurrent import RecurrentBlock
from model.config import AInit, ScanImpl
from sharding import rules
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
  pattern = r"= (\([^)]*\)|\S+) (" + "|".join(COLLECTIVES) + r")(?:-start)?\("
  return collections.Counter(
      (kind, shape) for shapes, kind in re.findall(pattern, text)
      for shape in re.findall(r"\w+\[[\d,]*\]", shapes))


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
  segment_pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
  counts = {}
  for name, block in blocks.items():
    graphdef, params = nnx.split(block)
    params = jax.device_put(params, rules.named(mesh, rules.param_specs(params)))
    if name == "mlp":
      fn = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731
    else:
      fn = lambda p, x: nnx.merge(graphdef, p)(x, segment_pos_BT)[0]  # noqa: E731
    counts[name] = _collectives(fn, params, x_BTD, mesh)
  activation = f"f32[{B},{T},{CONFIG.width}]"
  assert counts["mlp"] == {("all-reduce", activation): 2}, counts  # forward + backward
  assert counts["recurrent"] == counts["mlp"], counts


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
