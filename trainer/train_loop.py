"""The training loop: restore or initialise, step, log, checkpoint, stop cleanly."""

import signal
import threading
from typing import Callable, Iterator

import jax
import numpy as np
from absl import logging
from etils import epath

from model.flops import train_flops
from sharding import rules
from sharding.mesh import make_mesh
from trainer.checkpoint import Checkpointer, restore_params, restore_state
from trainer import config as config_lib
from trainer.config import Config
from trainer.eval_lib import Scorer, summary
from trainer.metrics import MetricsWriter
from trainer.optimizer import make_optimizer
from trainer.state import TrainState, init_state, plan_state
from trainer.train_step import TrainStep, device_batch


class NonFiniteLossError(RuntimeError):
  """Raised when a step's loss or gradient norm is NaN or Inf."""


class StopFlag:
  """Set by SIGTERM (preemption); the loop checks it at step boundaries."""

  def __init__(self):
    self.event = threading.Event()

  def install(self):
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, lambda signum, frame: self.event.set())
    return self

  def __bool__(self):
    return self.event.is_set()


def barrier(name: str, timeout_minutes: int = 30):
  """All processes wait here (the coordination service, not a collective)."""
  if jax.process_count() > 1:
    from jax._src import distributed  # the public API has no timed barrier
    distributed.global_state.client.wait_at_barrier(name, timeout_minutes * 60_000)


def check_workdir(workdir: str) -> epath.Path:
  """Creates the workdir if needed; a clear error if it cannot be written."""
  path = epath.Path(workdir)
  if workdir.startswith("gs://"):
    bucket = "gs://" + workdir[len("gs://"):].split("/", 1)[0]
    if not epath.Path(bucket).exists():
      raise ValueError(f"--workdir={workdir}: the bucket {bucket} does not exist or these "
                       "credentials cannot see it; create it (infra/) or fix the path")
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".write_probe"
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # noqa: BLE001 - any storage error means the same here
    raise ValueError(f"--workdir={workdir} is not a writable directory: {e}") from e
  return path


def initial_state(config, optimizer, setup, checkpointer, data_iterator, init_from,
                  init_params_from) -> TrainState:
  """Restore order: this run's latest step -> --init_from (a full state) ->
  --init_params_from (parameters only) -> fresh initialisation."""
  latest = checkpointer.latest_step()
  if latest is not None:
    logging.info("resuming from %s/%d", checkpointer.directory, latest)
    state, _ = checkpointer.restore(latest, setup, data_iterator)
    return state
  if init_from:
    logging.info("initialising the full state from %s", init_from)
    return restore_state(init_from, setup)
  state = init_state(config.model, optimizer, setup, config.run.seed)
  if init_params_from:
    logging.info("initialising parameters from %s", init_params_from)
    state = state._replace(params=restore_params(init_params_from, setup))
  return state


def run_steps(config: Config, workdir: str, data_iterator, *, init_from: str = "",
              init_params_from: str = "", stop: StopFlag | None = None,
              profile_steps: tuple[int, int] | None = None,
              eval_data: Callable[[], Iterator] | None = None) -> list[dict]:
  """Trains to `config.run.steps`; returns the metrics of every step run.

  With `eval_data` (a fresh validation iterator per call) and
  `run.eval_every_steps`, the loss and next-token accuracy of `run.eval_steps`
  validation batches are logged as `eval_loss` and `eval_accuracy` every that
  many steps.

  `profile_steps=(start, stop)` writes a profiler trace of steps start..stop
  (inclusive, counted from 1) to <workdir>/profile.

  `data_iterator` yields this host's batches {"tokens", "segment_pos"} and
  optionally "loss_mask" (1 where the target token counts; the synthetic
  tasks' answers), each (B/hosts, T), and supports Grain checkpointing.
  Raises NonFiniteLossError on a NaN/Inf loss without checkpointing the bad
  state.
  """
  check_workdir(workdir)
  stop = stop if stop is not None else StopFlag()
  mesh = make_mesh(config.mesh)
  rules.check_batch_divisible(config.data.global_batch_size, mesh,
                              config.optimizer.grad_accum_steps)
  optimizer = make_optimizer(config.optimizer, config.run.steps)
  setup = plan_state(config.model, optimizer, mesh)
  checkpointer = Checkpointer(workdir, config.checkpoint)
  state = initial_state(config, optimizer, setup, checkpointer, data_iterator,
                        init_from, init_params_from)
  train_step = TrainStep(setup, optimizer, mesh, config.optimizer.z_loss,
                         config.optimizer.grad_accum_steps)
  train_step.compile_now(state, (config.data.global_batch_size, config.data.seq_len))
  barrier("griffin: train step compiled")
  row = rules.batch_sharding(mesh)
  tokens = config.data.global_batch_size * config.data.seq_len
  writer = MetricsWriter(workdir, train_flops(
      config.model, config.data.global_batch_size, config.data.seq_len), tokens)
  config_json = config_lib.to_dict(config)
  history, pending = [], None  # pending: (step, metrics on device), read one step late
  scorer = Scorer(setup.graphdef, mesh) if eval_data and config.run.eval_every_steps else None

  def settle(pending):
    step, metrics = pending
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not all(np.isfinite(v) for v in metrics.values()):
      raise NonFiniteLossError(f"step {step}: non-finite metrics {metrics}; the last "
                               f"committed checkpoint is {checkpointer.latest_step()}")
    history.append({"step": step, **metrics})
    if step % config.run.log_every_steps == 0 or step == config.run.steps:
      writer.write(step, metrics)

  step = int(state.step)
  tracing = False
  try:
    while step < config.run.steps and not stop:
      if profile_steps and step + 1 == profile_steps[0]:
        jax.profiler.start_trace(str(epath.Path(workdir) / "profile"))
        tracing = True
      state, metrics = train_step(state, *device_batch(row, next(data_iterator)))
      step += 1
      if pending:
        settle(pending)  # the previous step's numbers, now that this one is queued
      pending = (step, metrics)
      if tracing and step == profile_steps[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        tracing = False
      if scorer and step % config.run.eval_every_steps == 0:
        result = summary(*scorer(state.params, eval_data(), config.run.eval_steps,
                                 config.data.seq_len))
        writer.write_eval(step, {"eval_loss": result["loss"],
                                 "eval_perplexity": result["perplexity"],
                                 "eval_accuracy": result["accuracy"]})
      if step % config.checkpoint.save_every_steps == 0 or step == config.run.steps or stop:
        settle(pending)  # never checkpoint a state whose loss was not finite
        pending = None
        checkpointer.save(step, state, data_iterator, config_json)
    if pending:
      settle(pending)
    if stop and step < config.run.steps:
      logging.info("stop requested (SIGTERM): saved step %d and exiting", step)
  finally:
    if tracing:  # the run ended inside the profiled range
      jax.profiler.stop_trace()
    checkpointer.close()  # waits for the last async save to commit
    writer.close()
  return history

