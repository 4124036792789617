"""What `python -m trainer.train` does: join processes, build the data
iterator, run the loop, and report."""

import jax
from absl import logging

from pipeline import streams
from trainer import lr_rule
from trainer.config import Config
from trainer.preemption import StopFlag
from trainer.resume import check_workdir
from trainer.train_loop import run_steps


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


def prepare_data(config: Config):
  """Process 0 builds a missing default store; the others wait for it and
  then only read (no two processes write the same files)."""
  from jax.experimental import multihost_utils

  vocab_size = config.model.vocab_size
  if jax.process_index() == 0:
    streams.ensure_stores(config.data, vocab_size, build_if_missing=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("griffin: data prepared")
  streams.ensure_stores(config.data, vocab_size, build_if_missing=False)


def make_tokenizer(config: Config):
  """Text <-> ids for `config.data` (its store built first if missing, unless
  data.tokenizer names the tokenizer itself)."""
  if not config.data.tokenizer:
    prepare_data(config)
  return streams.make_tokenizer(config.data, config.model.vocab_size)


def make_train_iterator(config: Config):
  """This host's training batches for `config.data` (resumable anywhere)."""
  prepare_data(config)
  return streams.train_stream(config.data, config.model.vocab_size)


def make_eval_iterator(config: Config, num_batches: int) -> dict:
  """{source: this host's validation batches}: a fixed sample, the same
  every call; `num_batches` of them are taken."""
  prepare_data(config)
  return streams.eval_streams(config.data, config.model.vocab_size, num_batches)


def train(config: Config, workdir: str, *, init_from: str = "", init_params_from: str = "",
          profile_steps=None, coordinator_address: str = "", num_processes: int = 1,
          process_id: int = 0) -> list[dict]:
  init_processes(coordinator_address, num_processes, process_id)
  print(f"process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} local devices of {jax.device_count()}", flush=True)
  check_workdir(workdir)  # bucket and write access, before the data is prepared
  if jax.process_index() == 0 and (message := lr_rule.warning(config)):
    logging.warning(message)
  if config.run.compilation_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", f"{workdir.rstrip('/')}/compilation_cache")
  history = run_steps(config, workdir, make_train_iterator(config), init_from=init_from,
                      init_params_from=init_params_from, stop=StopFlag().install(),
                      profile_steps=profile_steps,
                      # make_train_iterator prepared the data: no barrier per evaluation.
                      eval_data=lambda: streams.eval_streams(config.data, config.model.vocab_size,
                                                             config.run.eval_steps))
  if history:
    print(f"trained to step {history[-1]['step']}: loss {history[-1]['loss']:.4f}")
  return history
