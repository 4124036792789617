"""What `python -m trainer.train` does: join processes, build the data
iterator, run the loop, and report."""

import jax
from absl import logging

from pipeline import stdlib_bytes
from pipeline import synthetic
from trainer.config import Config
from trainer.train_loop import StopFlag, run_steps


def init_processes(coordinator_address: str, num_processes: int, process_id: int):
  """Joins a multi-process run. `num_processes=0`: discover the processes
  (Cloud TPU VMs and GKE give every host the worker list, its id and the
  multi-slice settings); > 1: the explicit CPU path over gloo."""
  if num_processes == 0:
    jax.distributed.initialize()
  elif num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def prepare_tokenizer(config: Config):
  """Process 0 builds the dataset and tokenizer if missing; the others wait
  for it and then only read (no two processes write the same files)."""
  from jax.experimental import multihost_utils
  from pipeline.prepare import prepare

  tokenizer = None
  if jax.process_index() == 0:
    tokenizer = prepare(config.data, config.model.vocab_size, build_if_missing=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("griffin: data prepared")
  if tokenizer is None:
    tokenizer = prepare(config.data, config.model.vocab_size, build_if_missing=False)
  return tokenizer


def make_tokenizer(config: Config):
  """Text <-> ids for `config.data` (bytes for "stdlib_bytes", the ids
  themselves for the synthetic tasks)."""
  if config.data.dataset == "stdlib_bytes":
    return stdlib_bytes.ByteTokenizer()
  if config.data.dataset in synthetic.DATASETS:
    synthetic.check_vocab(config.data.dataset, config.model.vocab_size)
    return synthetic.IdTokenizer(config.data.dataset)
  return prepare_tokenizer(config)


def synthetic_batches(config: Config, split: str):
  """A synthetic task's batches of `split` for this host, after checking that
  the model's vocabulary is the task's."""
  synthetic.check_vocab(config.data.dataset, config.model.vocab_size)
  return synthetic.batches(config.data, split, jax.process_index(), jax.process_count())


def make_train_iterator(config: Config):
  """This host's training batches for `config.data` (resumable)."""
  data = config.data
  if data.dataset in synthetic.DATASETS:
    return synthetic_batches(config, "train")
  if data.dataset == "stdlib_bytes":
    return stdlib_bytes.byte_batches("train", data.seq_len, data.global_batch_size,
                                     data.shuffle_seed, jax.process_index(),
                                     jax.process_count())
  from pipeline.grain_pipeline import train_iterator
  return train_iterator(data, prepare_tokenizer(config))


def make_eval_iterator(config: Config, num_batches: int):
  """This host's validation batches: deterministic, in order."""
  data = config.data
  if data.dataset in synthetic.DATASETS:
    return synthetic_batches(config, "validation")
  if data.dataset == "stdlib_bytes":
    return stdlib_bytes.byte_batches("validation", data.seq_len, data.global_batch_size,
                                     seed=None, process_index=jax.process_index(),
                                     process_count=jax.process_count())
  from pipeline.grain_pipeline import eval_batches
  return iter(eval_batches(data, prepare_tokenizer(config), num_batches))


def train(config: Config, workdir: str, *, init_from: str = "", init_params_from: str = "",
          profile_steps=None, coordinator_address: str = "", num_processes: int = 1,
          process_id: int = 0) -> list[dict]:
  init_processes(coordinator_address, num_processes, process_id)
  logging.info("process %d of %d, %d local devices of %d", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  history = run_steps(config, workdir, make_train_iterator(config), init_from=init_from,
                      init_params_from=init_params_from, stop=StopFlag().install(),
                      profile_steps=profile_steps,
                      eval_data=lambda: make_eval_iterator(config, config.run.eval_steps))
  if history:
    print(f"trained to step {history[-1]['step']}: loss {history[-1]['loss']:.4f}")
  return history
