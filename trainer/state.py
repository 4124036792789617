"""The train state, its shardings, and its sharded initialisation.

Shapes first, then shardings, then a jitted init: the full state is never
materialised on one device. Parameters are planned on their own
(`plan_params`): evaluation, sampling and imports restore them without an
optimizer.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from model.config import ModelConfig
from model.griffin import Griffin
from sharding import rules


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar
  params: nnx.State
  opt_state: Any


class ParamsPlan(NamedTuple):
  """The model's parameters before any exist: structure, shapes, shardings."""
  graphdef: nnx.GraphDef
  abstract: nnx.State  # ShapeDtypeStructs
  shardings: nnx.State  # NamedShardings, same structure


class ShardedSetup(NamedTuple):
  """What the step and the checkpointer need to know about the state."""
  graphdef: nnx.GraphDef
  abstract: TrainState  # ShapeDtypeStructs
  shardings: TrainState  # NamedShardings, same structure

  @property
  def params(self) -> ParamsPlan:
    return ParamsPlan(self.graphdef, self.abstract.params, self.shardings.params)


def plan_params(model_config: ModelConfig, mesh: jax.sharding.Mesh) -> ParamsPlan:
  """Abstract parameters via eval_shape, and their shardings from the rules table.

  Raises ValueError (before any compile) for a parameter without logical axes,
  a name the table does not map, or a dimension the mesh does not divide.
  """
  abstract_model = nnx.eval_shape(lambda: Griffin(model_config, nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract_model)
  specs = rules.param_specs(abstract_params)
  rules.check_divisible(abstract_params, specs, mesh)
  return ParamsPlan(graphdef, abstract_params, rules.named(mesh, specs))


def plan_state(model_config: ModelConfig, optimizer: optax.GradientTransformation,
               mesh: jax.sharding.Mesh) -> ShardedSetup:
  """`plan_params`, and the optimizer state beside the parameters."""
  params = plan_params(model_config, mesh)
  abstract_opt_state = jax.eval_shape(optimizer.init, params.abstract)
  opt_state_shardings = rules.opt_state_shardings(optimizer, abstract_opt_state,
                                                  params.shardings, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params.abstract,
                        opt_state=abstract_opt_state)
  return ShardedSetup(params.graphdef, abstract,
                      TrainState(replicated, params.shardings, opt_state_shardings))


def init_state(model_config: ModelConfig, optimizer: optax.GradientTransformation,
               setup: ShardedSetup, seed: int) -> TrainState:
  """The initial state, created directly in its shards (jit with out_shardings)."""
  def init():
    params = nnx.state(Griffin(model_config, nnx.Rngs(seed)))
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  return jax.jit(init, out_shardings=setup.shardings)()
