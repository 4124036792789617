"""Sampling from the decode cache: greedy decoding equals the argmax of the
full forward pass token by token, padding is inert, and the filters work."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.config import BlockType, ModelConfig
from model.griffin import Griffin
from model.sampling import SamplingConfig, left_pad, make_generate, next_token

# Window 8 < prompt + new tokens, so the ring buffer wraps while decoding.
GRIFFIN = ModelConfig(vocab_size=64, width=64, depth=3, lru_width=64, head_dim=32,
                      gate_blocks=4, attention_window=8)
MQA = dataclasses.replace(GRIFFIN, block_pattern=(BlockType.ATTENTION,), depth=2,
                          attention_window=None)
PROMPTS = [[5, 9, 3, 17, 2, 8, 40, 11, 7], [30, 1, 22]]
NEW = 12
KEY = jax.random.key(0)  # unused by greedy decoding


@pytest.fixture(scope="module", params=[GRIFFIN, MQA], ids=["griffin", "mqa"])
def model_and_greedy(request):
  graphdef, params = nnx.split(Griffin(request.param, nnx.Rngs(0)))
  generate = make_generate(graphdef, SamplingConfig(temperature=0, max_new_tokens=NEW))
  return graphdef, params, generate


def test_greedy_decoding_is_the_argmax_of_the_full_forward_pass(model_and_greedy):
  graphdef, params, generate = model_and_greedy
  new_BN = np.asarray(generate(params, *left_pad(PROMPTS), KEY))
  model = nnx.merge(graphdef, params)
  for prompt, new_N in zip(PROMPTS, new_BN):
    full_T = np.concatenate([prompt, new_N])[None]
    logits_1TV, _ = model(jnp.asarray(full_T), jnp.arange(full_T.shape[1])[None])
    argmax_N = np.asarray(jnp.argmax(logits_1TV[0, len(prompt) - 1:-1], axis=-1))
    np.testing.assert_array_equal(new_N, argmax_N)


def test_left_padding_is_inert(model_and_greedy):
  _, params, generate = model_and_greedy
  batched_BN = np.asarray(generate(params, *left_pad(PROMPTS), KEY))
  alone_1N = np.asarray(generate(params, *left_pad(PROMPTS[1:]), KEY))
  np.testing.assert_array_equal(batched_BN[1], alone_1N[0])


def test_filters_keep_only_the_allowed_tokens():
  logits_BV = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
  keys = jax.random.key(3)

  def drawn(**kwargs):
    return set(np.asarray(next_token(logits_BV, keys, SamplingConfig(**kwargs))).tolist())

  assert drawn(temperature=0) == {0}
  assert drawn(top_k=1) == {0}
  assert drawn(top_k=2) == {0, 1}
  assert drawn(top_p=0.5) == {0}  # 0.5 is reached by the first token alone
  assert drawn(top_p=0.8) == {0, 1}
  assert drawn(top_p=0.81) == {0, 1, 2}
  assert drawn() == {0, 1, 2, 3}


def test_a_seed_gives_the_same_samples_and_another_seed_others():
  graphdef, params = nnx.split(Griffin(GRIFFIN, nnx.Rngs(0)))
  generate = make_generate(graphdef, SamplingConfig(temperature=1.0, max_new_tokens=6))
  tokens_BT, segment_pos_BT = left_pad(PROMPTS)
  first, again, other = (np.asarray(generate(params, tokens_BT, segment_pos_BT,
                                             jax.random.key(seed))) for seed in (7, 7, 8))
  np.testing.assert_array_equal(first, again)
  assert (first != other).any()


@pytest.mark.parametrize("field, value", [("temperature", -1.0), ("top_k", -2),
                                          ("top_p", 0.0), ("top_p", 1.5),
                                          ("max_new_tokens", 0)])
def test_bad_sampling_settings_are_named(field, value):
  with pytest.raises(ValueError, match=f"sampling {field}={value}"):
    SamplingConfig(**{field: value})  # noqa


def test_an_empty_prompt_is_refused():
  with pytest.raises(ValueError, match=r"at least one token; lengths \[2, 0\]"):
    left_pad([[1, 2], []])
