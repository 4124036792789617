"""The jitted, sharded, state-donating train step."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sharding import rules
from trainer.loss import next_token_loss, next_token_nll
from trainer.state import ShardedSetup, TrainState


def device_batch(row: jax.sharding.NamedSharding, host_batch: dict) -> tuple:
  """(tokens_BT, segment_pos_BT, loss_mask_BT) global arrays from this host's
  batch. A batch without a "loss_mask" (text rows) gets all ones here, the one
  place that default is made: every in-document target counts, and text and
  task batches share one compiled step."""
  mask = host_batch.get("loss_mask")
  mask = np.ones_like(host_batch["tokens"]) if mask is None else np.asarray(mask, np.int32)
  return tuple(jax.make_array_from_process_local_data(row, x)
               for x in (host_batch["tokens"], host_batch["segment_pos"], mask))


class TrainStep:
  """`step(state, tokens_BT, segment_pos_BT, loss_mask_BT) -> (state, metrics)`.

  Contract: the state comes in and goes out with `setup.shardings` and is
  donated (its buffers are reused for the new state, so the caller must not
  touch the old one); the batch comes sharded over data x fsdp; metrics are
  replicated scalars. Call `lower(...)` to compile ahead of time.

  The step always takes a loss mask (1 where the target token counts,
  `trainer/loss.py`; `device_batch` makes it for text): one program for text
  and for the synthetic tasks.

  With `grad_accum_steps` K > 1 the batch is cut into K micro-batches whose
  summed gradients (a lax.scan, so activations of one micro-batch at a time)
  are divided by the batch's count of targets: the same update as one big
  batch, up to summation order.

  With `skip_non_finite`, a step whose loss or gradient norm is NaN or Inf
  returns the old parameters and optimizer state (only the step counter
  moves on) and reports `skipped` = 1 in its metrics. The choice is a select
  inside the compiled step, so no step waits on the host to make it.

  With `spike_limits` (the loss-spike guard's skip action, trainer/spikes.py)
  the step also takes `limits_2`, [loss limit, gradient-norm limit]: a
  finite step above either is dropped the same way and reports `spike` = 1.
  """

  def __init__(self, setup: ShardedSetup, optimizer: optax.GradientTransformation,
               mesh: jax.sharding.Mesh, z_loss: float = 0.0, grad_accum_steps: int = 1,
               skip_non_finite: bool = False, spike_limits: bool = False):
    self.mesh = mesh
    graphdef = setup.graphdef

    def loss_fn(params, tokens_BT, segment_pos_BT, loss_mask_BT):
      logits_BTV, _ = nnx.merge(graphdef, params)(tokens_BT, segment_pos_BT)
      return next_token_loss(logits_BTV, tokens_BT, segment_pos_BT, z_loss, loss_mask_BT)

    def nll_fn(params, tokens_BT, segment_pos_BT, loss_mask_BT):
      logits_BTV, _ = nnx.merge(graphdef, params)(tokens_BT, segment_pos_BT)
      return next_token_nll(logits_BTV, tokens_BT, segment_pos_BT, z_loss, loss_mask_BT)

    def accumulated_loss_and_grads(params, *batch_BT):
      # Row i*K + k goes to micro-batch k, so every device's rows feed every
      # micro-batch and none needs to move.
      def split(x_BT):
        x_KMT = jnp.swapaxes(x_BT.reshape(-1, grad_accum_steps, x_BT.shape[1]), 0, 1)
        return jax.lax.with_sharding_constraint(x_KMT, rules.microbatch_sharding(mesh))

      def micro(carry, batch):
        total, count, grads = carry
        (nll, n), g = jax.value_and_grad(nll_fn, has_aux=True)(params, *batch)
        return (total + nll, count + n, jax.tree.map(jnp.add, grads, g)), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      (total, count, grads), _ = jax.lax.scan(
          micro, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), zeros),
          tuple(split(x_BT) for x_BT in batch_BT))
      count = jnp.maximum(count, 1)
      return total / count, jax.tree.map(lambda g: g / count, grads)

    def step(state: TrainState, tokens_BT, segment_pos_BT, loss_mask_BT, limits_2=None):
      batch = (tokens_BT, segment_pos_BT, loss_mask_BT)
      if grad_accum_steps == 1:
        loss, grads = jax.value_and_grad(loss_fn)(state.params, *batch)
      else:
        loss, grads = accumulated_loss_and_grads(state.params, *batch)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
      if skip_non_finite or spike_limits:
        # A NaN or Inf in any gradient makes the global norm non-finite.
        finite = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
        drop = jnp.logical_not(finite) if skip_non_finite else jnp.bool_(False)
        if skip_non_finite:
          metrics["skipped"] = drop.astype(jnp.float32)
        if spike_limits:
          spike = finite & ((loss > limits_2[0]) | (metrics["grad_norm"] > limits_2[1]))
          metrics["spike"] = spike.astype(jnp.float32)
          drop = drop | spike
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(drop, old, new),
                                         (params, opt_state), (state.params, state.opt_state))
      return TrainState(state.step + 1, params, opt_state), metrics

    batch = rules.batch_sharding(mesh)
    self.spike_limits = spike_limits
    self._compiled = None  # set by compile_now
    limits = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),)
    self._jitted = jax.jit(
        step, in_shardings=(setup.shardings, batch, batch, batch) + (limits if spike_limits else ()),
        out_shardings=(setup.shardings, None), donate_argnames=("state",))

  def context(self):
    """The mesh and rules the model's activation constraints resolve against."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(rules.activation_rules())
    return stack

  def __call__(self, state: TrainState, tokens_BT, segment_pos_BT, loss_mask_BT,
               limits_2=None):
    args = (state, tokens_BT, segment_pos_BT, loss_mask_BT)
    if self.spike_limits:
      args += (np.full(2, np.inf, np.float32) if limits_2 is None else limits_2,)
    with self.context():
      return (self._jitted if self._compiled is None else self._compiled)(*args)

  def compile_now(self, state: TrainState, batch_shape: tuple[int, int]):
    """Compiles before the first step, so that processes reach their first
    collective together (gloo gives up after 30 s; CPU compiles of the two
    processes can differ by more)."""
    self._compiled = self.lower(state, batch_shape).compile()

  def lower(self, state, batch_shape: tuple[int, int]) -> jax.stages.Lowered:
    """Lowered for (possibly abstract) `state` and int32 (B, T) batches sharded
    over the batch axes: the program a run compiles (`compile_now`), or the
    compile-only check for a TPU topology."""
    batch = jax.ShapeDtypeStruct(batch_shape, jnp.int32,
                                 sharding=rules.batch_sharding(self.mesh))
    limits = (jax.ShapeDtypeStruct((2,), jnp.float32),) if self.spike_limits else ()
    with self.context():
      return self._jitted.lower(state, batch, batch, batch, *limits)
