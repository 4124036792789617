"""Sampling from a saved checkpoint: restore, tokenize, generate, detokenize."""

import time

import jax
import numpy as np

from model.sampling import SamplingConfig, left_pad, make_generate
from sharding import rules
from trainer.inference import data_parallel_mesh, open_checkpoint, restore_here
from trainer.train_lib import make_tokenizer


def sample(workdir: str, step: int | None, prompts: list[str], config: SamplingConfig,
           seed: int = 0) -> tuple[list[str], float]:
  """(the continuation of each prompt, generated tokens per second).

  The batch of prompts is padded with copies of the last one to a multiple of
  the device count (the batch is split over all devices), and each
  continuation stops at the tokenizer's EOS.
  """
  checkpointer, step, run_config, _ = open_checkpoint(workdir, step, {})
  tokenizer = make_tokenizer(run_config)
  ids = tokenizer.encode_batch(prompts)
  if tokenizer.bos_id >= 0:  # documents were trained with a leading BOS
    ids = [[tokenizer.bos_id, *row] for row in ids]
  mesh = data_parallel_mesh()
  shards = jax.device_count()
  ids += [ids[-1]] * (-len(ids) % shards)
  plan, params = restore_here(checkpointer, step, run_config, mesh)

  generate = make_generate(plan.graphdef, config)
  row = rules.batch_sharding(mesh)
  batch = [jax.device_put(x, row) for x in left_pad(ids)]
  key = jax.random.key(seed)
  with jax.set_mesh(mesh), rules.activation_rules():
    compiled = generate.lower(params, *batch, key).compile()
    start = time.perf_counter()
    new_BN = np.asarray(compiled(params, *batch, key))
    seconds = time.perf_counter() - start
  texts = []
  for new_N in new_BN[:len(prompts)]:
    new_N = new_N.tolist()
    if tokenizer.eos_id in new_N:
      new_N = new_N[:new_N.index(tokenizer.eos_id)]
    texts.append(tokenizer.decode(new_N))
  return texts, new_BN.size / seconds
