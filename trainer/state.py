"""The train state, its shardings, and its sharded initialisation.

Shapes first, then shardings, then a jitted init: the full state is never
materialised on one device.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from model.config import ModelConfig
from model.griffin import Griffin
from sharding import rules
from trainer.optimizer import opt_state_specs


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar
  params: nnx.State
  opt_state: Any


class ShardedSetup(NamedTuple):
  """What the step and the checkpointer need to know about the state."""
  graphdef: nnx.GraphDef
  abstract: TrainState  # ShapeDtypeStructs
  shardings: TrainState  # NamedShardings, same structure


def plan_state(model_config: ModelConfig, optimizer: optax.GradientTransformation,
               mesh: jax.sharding.Mesh) -> ShardedSetup:
  """Abstract state via eval_shape, and its shardings from the rules table.

  Raises ValueError (before any compile) for a parameter without logical axes,
  a name the table does not map, or a dimension the mesh does not divide.
  """
  abstract_model = nnx.eval_shape(lambda: Griffin(model_config, nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract_model)
  param_specs = rules.param_specs(abstract_params)
  rules.check_divisible(abstract_params, param_specs, mesh)
  abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
  specs = TrainState(step=jax.sharding.PartitionSpec(), params=param_specs,
                     opt_state=opt_state_specs(optimizer, abstract_opt_state, param_specs))
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                        opt_state=abstract_opt_state)
  return ShardedSetup(graphdef, abstract, rules.named(mesh, specs))


def init_state(model_config: ModelConfig, optimizer: optax.GradientTransformation,
               setup: ShardedSetup, seed: int) -> TrainState:
  """The initial state, created directly in its shards (jit with out_shardings)."""
  @jax.jit
  def init():
    params = nnx.state(Griffin(model_config, nnx.Rngs(seed)))
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  return jax.jit(init, out_shardings=setup.shardings)()
