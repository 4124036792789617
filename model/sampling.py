"""Sampling: batched prompts, temperature / top-k / top-p, one token per step
from the decode cache, so the prompt is never recomputed.

Prompts of different lengths are left-padded. A pad token has segment_pos 0,
so each pad is a one-token document of its own: the recurrence, the Conv1D
and attention all restart at the prompt's first token and never see the pads.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.griffin import Griffin

_MASKED = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the next token is drawn from the logits."""

  temperature: float = 1.0  # 0 = greedy (argmax)
  top_k: int = 0  # keep the k most likely tokens; 0 = all
  top_p: float = 1.0  # keep the smallest set with this much probability
  max_new_tokens: int = 64

  def __post_init__(self):
    checks = (("temperature", self.temperature >= 0, ">= 0 (0 = greedy)"),
              ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0"),
              ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
              ("max_new_tokens", isinstance(self.max_new_tokens, int)
               and self.max_new_tokens >= 1, "an integer >= 1"))
    for name, ok, valid in checks:
      if not ok:
        raise ValueError(f"sampling {name}={getattr(self, name)!r} must be {valid}")


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(tokens_BT, segment_pos_BT) with each prompt right-aligned."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError(f"every prompt needs at least one token; lengths {[len(p) for p in prompts]}")
  T = max(len(p) for p in prompts)
  tokens_BT = np.full((len(prompts), T), pad_id, np.int32)
  segment_pos_BT = np.zeros((len(prompts), T), np.int32)
  for b, prompt in enumerate(prompts):
    tokens_BT[b, T - len(prompt):] = prompt
    segment_pos_BT[b, T - len(prompt):] = np.arange(len(prompt))
  return tokens_BT, segment_pos_BT


def next_token(logits_BV, key, config: SamplingConfig):
  """One draw per row after temperature, top-k and top-p filtering."""
  if config.temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV.astype(jnp.float32) / config.temperature
  if config.top_k:
    kth_B1 = jax.lax.top_k(logits_BV, config.top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, _MASKED, logits_BV)
  if config.top_p < 1:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    # Probability of the tokens strictly more likely than each one: keep a
    # token while that is below top_p (the most likely is always kept).
    before_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1) - jax.nn.softmax(
        sorted_BV, axis=-1)
    cutoff_B1 = jnp.min(jnp.where(before_BV < config.top_p, sorted_BV, jnp.inf),
                        axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, _MASKED, logits_BV)
  return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def make_generate(graphdef: nnx.GraphDef, config: SamplingConfig):
  """A jitted `generate(params, tokens_BT, segment_pos_BT, key) -> new_tokens_BN`:
  one prefill call over the prompts, then N-1 single-token decode steps."""
  N = config.max_new_tokens

  @jax.jit
  def generate(params, tokens_BT, segment_pos_BT, key):
    model: Griffin = nnx.merge(graphdef, params)
    T = tokens_BT.shape[1]
    logits_BTV, cache = model(tokens_BT, segment_pos_BT, cache_length=T + N)
    keys = jax.random.split(key, N)
    first_B = next_token(logits_BTV[:, -1], keys[0], config)

    def step(carry, key):
      token_B, pos_B, cache = carry
      logits_B1V, cache = model(token_B[:, None], pos_B[:, None], cache=cache)
      new_B = next_token(logits_B1V[:, 0], key, config)
      return (new_B, pos_B + 1, cache), new_B

    carry = (first_B, segment_pos_BT[:, -1] + 1, cache)
    _, rest_NB = jax.lax.scan(step, carry, keys[1:])
    return jnp.concatenate([first_B[:, None], rest_NB.T], axis=1)

  return generate
