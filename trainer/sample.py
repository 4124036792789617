"""Sample text from a checkpoint with the decode cache.

    python -m trainer.sample --workdir=DIR_OR_GS_PATH [--step=N] \\
        --prompt="def main(" [--prompt=...] [--max_new_tokens=64] \\
        [--temperature=0.8] [--top_k=40] [--top_p=0.95] [--seed=0]

Prompts are decoded together as one batch; prints each continuation and the
decode rate (tokens/s, compile excluded).
"""

from absl import flags

from common import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_PROMPTS = flags.DEFINE_multi_string("prompt", ["def "], "A prompt; repeat for a batch.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens generated per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens; 0 = all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Keep the smallest set with this probability.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the draws.")


def main():
  from model.sampling import SamplingConfig  # after flag parsing: importing JAX is slow
  from trainer.sample_lib import sample
  config = SamplingConfig(temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                          top_p=_TOP_P.value, max_new_tokens=_MAX_NEW.value)
  texts, tokens_per_s = sample(_WORKDIR.value, _STEP.value, _PROMPTS.value, config, _SEED.value)
  for prompt, text in zip(_PROMPTS.value, texts):
    print(f"--- {prompt!r}\n{prompt}{text}")
  print(f"--- {len(texts)} x {config.max_new_tokens} tokens at {tokens_per_s:.1f} tokens/s")


if __name__ == "__main__":
  cli.run(main)
