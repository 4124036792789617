"""What `python -m trainer.train` does: join processes, build the data
iterator, run the loop, and report."""

import jax
from absl import logging

from pipeline import stdlib_bytes
from trainer.config import Config
from trainer.train_loop import StopFlag, run_steps


def init_processes(coordinator_address: str, num_processes: int, process_id: int):
  """Joins a multi-process run (CPU processes talk over gloo)."""
  if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def make_train_iterator(config: Config):
  """This host's training batches for `config.data`."""
  data = config.data
  if data.dataset == "stdlib_bytes":
    return stdlib_bytes.byte_batches("train", data.seq_len, data.global_batch_size,
                                     data.shuffle_seed, jax.process_index(),
                                     jax.process_count())
  raise ValueError(f"data.dataset={data.dataset!r} is not available yet; valid: 'stdlib_bytes'")


def make_eval_iterator(config: Config):
  """This host's validation batches: deterministic, in order."""
  data = config.data
  if data.dataset == "stdlib_bytes":
    return stdlib_bytes.byte_batches("validation", data.seq_len, data.global_batch_size,
                                     seed=None, process_index=jax.process_index(),
                                     process_count=jax.process_count())
  raise ValueError(f"data.dataset={data.dataset!r} is not available yet; valid: 'stdlib_bytes'")


def train(config: Config, workdir: str, *, init_from: str = "", init_params_from: str = "",
          profile_steps=None, coordinator_address: str = "", num_processes: int = 1,
          process_id: int = 0) -> list[dict]:
  init_processes(coordinator_address, num_processes, process_id)
  logging.info("process %d of %d, %d local devices of %d", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  history = run_steps(config, workdir, make_train_iterator(config), init_from=init_from,
                      init_params_from=init_params_from, stop=StopFlag().install(),
                      profile_steps=profile_steps)
  if history:
    print(f"trained to step {history[-1]['step']}: loss {history[-1]['loss']:.4f}")
  return history
