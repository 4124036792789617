"""The jitted, sharded, state-donating train step."""

import contextlib

import jax
import optax
from flax import nnx

from sharding import rules
from trainer.loss import next_token_loss
from trainer.state import ShardedSetup, TrainState


class TrainStep:
  """`step(state, tokens_BT, segment_pos_BT) -> (state, metrics)`.

  Contract: the state comes in and goes out with `setup.shardings` and is
  donated (its buffers are reused for the new state, so the caller must not
  touch the old one); the batch comes sharded over data x fsdp; metrics are
  replicated scalars. Call `lower(...)` to compile ahead of time.
  """

  def __init__(self, setup: ShardedSetup, optimizer: optax.GradientTransformation,
               mesh: jax.sharding.Mesh, z_loss: float = 0.0):
    self.mesh = mesh
    graphdef = setup.graphdef

    def loss_fn(params, tokens_BT, segment_pos_BT):
      logits_BTV, _ = nnx.merge(graphdef, params)(tokens_BT, segment_pos_BT)
      return next_token_loss(logits_BTV, tokens_BT, segment_pos_BT, z_loss)

    def step(state: TrainState, tokens_BT, segment_pos_BT):
      loss, grads = jax.value_and_grad(loss_fn)(state.params, tokens_BT, segment_pos_BT)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
      return TrainState(state.step + 1, params, opt_state), metrics

    batch = rules.batch_sharding(mesh)
    self._compiled = None  # set by compile_now
    self._jitted = jax.jit(step, in_shardings=(setup.shardings, batch, batch),
                           out_shardings=(setup.shardings, None),
                           donate_argnames=("state",))

  def context(self):
    """The mesh and rules the model's activation constraints resolve against."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(rules.activation_rules())
    return stack

  def __call__(self, state: TrainState, tokens_BT, segment_pos_BT):
    with self.context():
      if self._compiled is not None:
        return self._compiled(state, tokens_BT, segment_pos_BT)
      return self._jitted(state, tokens_BT, segment_pos_BT)

  def compile_now(self, state: TrainState, batch_shape: tuple[int, int]):
    """Compiles before the first step, so that processes reach their first
    collective together (gloo gives up after 30 s; CPU compiles of the two
    processes can differ by more)."""
    row = rules.batch_sharding(self.mesh)
    batch = jax.ShapeDtypeStruct(batch_shape, jax.numpy.int32, sharding=row)
    self._compiled = self.lower(state, batch, batch).compile()

  def lower(self, state, tokens_BT, segment_pos_BT):
    """Lower for the given (possibly abstract) arguments, e.g. a TPU topology."""
    with self.context():
      return self._jitted.lower(state, tokens_BT, segment_pos_BT)
