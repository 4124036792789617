"""AdamW with warmup + cosine decay, global-norm clipping, and a decay mask."""

import optax
from flax import nnx

from trainer.config import OptimizerConfig

# Parameters spared from weight decay. Norm scales and biases, as usual; and
# the RG-LRU's a_param (= -Λ): it sets each channel's memory length, and decay
# would pull it to 0, i.e. a = sigmoid(0)-like fast forgetting, not a smaller
# weight.
NO_DECAY = frozenset({"scale", "bias", "up_bias", "in_bias", "out_bias", "b", "a_param"})


def decay_mask(params: nnx.State):
  """True for the parameters that get weight decay."""
  return nnx.map_state(lambda path, v: v.replace(str(path[-1]) not in NO_DECAY), params)


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps, config.decay_steps or total_steps,
      config.learning_rate * config.end_lr_fraction)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  clip = (optax.clip_by_global_norm(config.grad_clip_norm)
          if config.grad_clip_norm else optax.identity())
  return optax.chain(clip, optax.adamw(
      learning_rate_schedule(config, total_steps), config.b1, config.b2, config.eps,
      weight_decay=config.weight_decay, mask=decay_mask))
