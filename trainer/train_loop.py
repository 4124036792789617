"""The training loop: restore or initialise, step, log, checkpoint, stop cleanly."""

import sys
import time
from typing import Callable, Iterator

import jax
import numpy as np
from absl import logging
from etils import epath

from model.flops import train_flops
from sharding import rules
from trainer.checkpoint import Checkpointer, check_step_dir, committed_steps
from trainer import config as config_lib
from trainer import goodput
from trainer import lm_eval_lib
from trainer.config import Config, NonFinite, SpikeAction
from trainer.metrics import MetricsWriter
from trainer.periodic_eval import PeriodicEvaluation
from trainer.preemption import StopFlag, commit_within_grace
from trainer.progress import Progress
from trainer.resume import barrier, check_workdir, initial_state
from trainer.spikes import LossSpikeError, SpikeGuard
from trainer.program import build_program
from trainer.state import TrainState
from trainer.train_step import device_batch


class NonFiniteLossError(RuntimeError):
  """Raised when a step's loss or gradient norm is NaN or Inf (policy HALT),
  or when more than `run.max_skipped_steps` were skipped (policy SKIP)."""


class _Rollback(Exception):
  """Raised by the loop's metrics reader at a spike under `spike_action=rollback`."""

  def __init__(self, step: int):
    super().__init__(step)
    self.step = step


def run_steps(config: Config, workdir: str, data_iterator, *, init_from: str = "",
              init_params_from: str = "", stop: StopFlag | None = None,
              profile_steps: tuple[int, int] | None = None,
              eval_data: Callable[[], Iterator] | None = None) -> list[dict]:
  """Trains to `config.run.steps`; returns the metrics of every step run.

  With `eval_data` (a fresh validation iterator per call) and
  `run.eval_every_steps`, the loss and next-token accuracy of `run.eval_steps`
  validation batches are logged as `eval_loss` and `eval_accuracy` every that
  many steps. With `run.lm_eval_every_steps`, lm-eval's scores of
  `run.lm_eval_tasks` as `lm_eval/<task>/<metric>` (trainer/lm_eval_lib.py).

  `profile_steps=(start, stop)` writes a profiler trace of steps start..stop
  (inclusive, counted from 1) to <workdir>/profile.

  `data_iterator` yields this host's batches {"tokens", "segment_pos"} and
  optionally "loss_mask" (1 where the target token counts; the synthetic
  tasks' answers), each (B/hosts, T), and supports Grain checkpointing.

  A NaN/Inf loss or gradient norm: with `run.on_non_finite=halt` raises
  NonFiniteLossError without checkpointing the bad state; with `skip` the
  update is dropped, the record says `skipped` 1, `skipped_steps` counts them
  (saved with every checkpoint, so a resumed run goes on counting) and more
  than `run.max_skipped_steps` raise NonFiniteLossError.

  After SIGTERM (`stop` installed) the loop saves at the next step boundary
  and returns once that step committed; PreemptionTimeoutError if it did not
  within `checkpoint.preemption_grace_s` of the signal. A save that fails
  raises CheckpointSaveError (trainer/checkpoint.py).
  """
  check_workdir(workdir)
  for path, flag in ((init_from, "--init_from"), (init_params_from, "--init_params_from")):
    if path:
      check_step_dir(path, flag)
  stop = stop if stop is not None else StopFlag()
  checkpoints = epath.Path(workdir) / "checkpoints"
  finished = committed_steps(checkpoints) if checkpoints.exists() else []
  if finished and finished[-1] >= config.run.steps:
    logging.warning("nothing to train: %s holds step %d and run.steps=%d; raise "
                    "run.steps (--config.run.steps=N) to train on", workdir, finished[-1],
                    config.run.steps)
    return []
  # Before anything compiles: a missing lm-eval or an unknown task stops the run here.
  harness = lm_eval_lib.InTraining(config) if config.run.lm_eval_every_steps else None
  program = build_program(config)
  mesh, train_step = program.mesh, program.train_step
  checkpointer = Checkpointer(workdir, config.checkpoint, mesh)
  progress = Progress(config.run.steps, jax.device_count(), enabled=jax.process_index() == 0)
  recorder = goodput.Recorder(workdir, enabled=jax.process_index() == 0)
  recorder.since_start("startup")
  with recorder.phase("restore"):
    state, counters = initial_state(config, program, checkpointer, data_iterator,
                                    init_from, init_params_from, progress)
    checkpointer.discard_local_after(int(state.step))
  if (checkpointer.latest_step() is not None  # resumed this run's own step
      or (checkpointer.local is not None and int(state.step) and not init_from)):
    recorder.resumed_from(int(state.step))
  skip = config.run.on_non_finite == NonFinite.SKIP
  skipped_steps = counters.get("skipped_steps", 0)
  guard = SpikeGuard(config.run.spike_factor, config.run.spike_window, counters)
  rollback = guard.enabled and config.run.spike_action == SpikeAction.ROLLBACK
  with recorder.phase("compile"):
    train_step.compile_now(state, (config.data.global_batch_size, config.data.seq_len))
  barrier("griffin: train step compiled")
  row = rules.batch_sharding(mesh)
  tokens = config.data.global_batch_size * config.data.seq_len
  writer = MetricsWriter(workdir, train_flops(
      config.model, config.data.global_batch_size, config.data.seq_len), tokens)
  if writer.peak is None:
    progress.event(f"MFU is not reported: no peak FLOP/s is known for "
                   f"{jax.devices()[0].device_kind} devices (sharding/topologies.py); "
                   "tokens/s and TFLOP/s per device are in metrics.jsonl")
  progress.begin(int(state.step))
  config_json = config_lib.to_dict(config)
  history, pending = [], None  # pending: (step, metrics on device), read one step late
  evaluate = PeriodicEvaluation(config, program, eval_data, harness, writer, progress, recorder)

  commit_wait_s = config.checkpoint.preemption_grace_s  # for the error messages

  def counters_now() -> dict:
    """What a checkpoint keeps of the run's counters."""
    return {"skipped_steps": skipped_steps, **(guard.counters() if guard.enabled else {})}

  def settle(pending):
    nonlocal skipped_steps
    step, metrics = pending
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if metrics.get("skipped"):
      skipped_steps += 1
      logging.warning("step %d: non-finite metrics %s; its update was skipped (%d "
                      "skipped so far)", step, metrics, skipped_steps)
      if skipped_steps > config.run.max_skipped_steps:
        raise NonFiniteLossError(
            f"step {step}: non-finite metrics {metrics}; {skipped_steps} steps were "
            f"skipped, more than run.max_skipped_steps={config.run.max_skipped_steps}; "
            f"the last committed checkpoint is {checkpointer.last_committed(commit_wait_s)}")
    elif not all(np.isfinite(v) for v in metrics.values()):
      raise NonFiniteLossError(
          f"step {step}: non-finite metrics {metrics}; the last committed checkpoint "
          f"is {checkpointer.last_committed(commit_wait_s)} (run.on_non_finite=skip drops such "
          "updates instead)")
    if guard.enabled and guard.observe(step, metrics, rollback, config.run.max_spikes,
                                       lambda: checkpointer.last_committed(commit_wait_s)):
      raise _Rollback(step)
    if skip:
      metrics["skipped_steps"] = float(skipped_steps)
    history.append({"step": step, **metrics})
    # Step 1 too: the first loss tells at once whether the run starts where it should.
    if step % config.run.log_every_steps == 0 or step in (1, config.run.steps):
      progress.interval(writer.write(step, metrics))
      recorder.steps(step)
      recorder.flush()

  def roll_back(at: int, dispatched: int) -> TrainState:
    """The state of the newest committed step before the spike at `at`; the
    data goes on after the batches already read (up to step `dispatched`)."""
    checkpointer.last_committed(commit_wait_s)  # a save in flight counts once committed
    before = [s for s in committed_steps(checkpointer.directory) if s < at]
    if not before:
      raise LossSpikeError(f"step {at}: a loss spike, and no committed checkpoint before it "
                           f"in {checkpointer.directory} to roll back to; save earlier "
                           "(checkpoint.save_every_steps) or use run.spike_action=skip")
    restored, _, saved = checkpointer.restore(before[-1], program.setup)
    checkpointer.discard_local_after(before[-1])
    guard.rolled_back(at, before[-1], dispatched - before[-1], saved.get("spike_history", []))
    progress.event(f"loss spike at step {at}: rolled back to step {before[-1]}, skipping the "
                   f"{dispatched - before[-1]} batches read since it (run.spike_action=rollback)")
    return restored

  def run_one_step(state, step, pending):
    """Dispatches step + 1; reads the step before's metrics, evaluates, saves.
    Returns (state, step, pending)."""
    nonlocal tracing
    if profile_steps and step + 1 == profile_steps[0]:
      jax.profiler.start_trace(str(epath.Path(workdir) / "profile"))
      tracing = True
    nonlocal dispatched
    with recorder.phase("data"):
      batch = device_batch(row, next(data_iterator))
    state, metrics = train_step(state, *batch, limits_2=guard.limits(step + 1))
    step = dispatched = step + 1
    if pending:
      settle(pending)  # the previous step's numbers, now that this one is queued
    pending = (step, metrics)
    if tracing and step == profile_steps[1]:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      tracing = False
    evaluate(step, state)
    to_workdir = step % config.checkpoint.save_every_steps == 0 or step == config.run.steps or stop
    to_local = (not to_workdir and checkpointer.local is not None
                and step % config.checkpoint.local_every_steps == 0)
    if to_workdir or to_local:
      settle(pending)  # never checkpoint a state whose loss was not finite
      pending = None
      with recorder.phase("checkpoint"):
        if to_local:
          checkpointer.save_local(step, state, data_iterator, config_json, counters_now())
        else:
          if stop.signal_time is not None:  # the wait for the save before counts too
            commit_within_grace(checkpointer, stop, config.checkpoint.preemption_grace_s)
          checkpointer.save(step, state, data_iterator, config_json, counters_now())
      where = "the local tier" if to_local else f"{checkpointer.directory}/{step}"
      progress.event(f"checkpoint: saving step {step} to {where}")
    return state, step, pending

  step = dispatched = int(state.step)
  tracing = False
  recorder.loop_starts()
  try:
    while step < config.run.steps and not stop:
      try:
        state, step, pending = run_one_step(state, step, pending)
      except _Rollback as spike:
        with recorder.phase("restore"):
          state, pending = roll_back(spike.step, dispatched), None
        recorder.rolled_back(dispatched - int(state.step))
        step = dispatched = int(state.step)
    if pending:
      settle(pending)
    recorder.steps(step)
    if stop.signal_time is not None:
      committed = commit_within_grace(checkpointer, stop, config.checkpoint.preemption_grace_s)
      progress.event(f"SIGTERM: step "
                     f"{committed if committed is not None else checkpointer.last_committed()} "
                     f"is committed, {time.monotonic() - stop.signal_time:.2f} s after the "
                     "signal; exiting")
  finally:
    if tracing:  # the run ended inside the profiled range
      jax.profiler.stop_trace()
    # On an error, the save in flight gets the preemption grace to commit:
    # storage that is gone would hold the exit for as long as its clients retry.
    grace = config.checkpoint.preemption_grace_s if sys.exc_info()[1] else None
    close_all(lambda: checkpointer.close(grace), writer.close, recorder.flush, progress.close)
  if recorder.enabled:
    progress.event(goodput.format_report(goodput.report(workdir)))
  return history


def close_all(*closers):
  """Runs every closer. The first error is raised, unless the loop is already
  raising one: a full disk must not hide why the run stopped behind a
  complaint about flushing metrics to that disk."""
  raising = sys.exc_info()[1] is not None
  first = None
  for close in closers:
    try:
      close()
    except Exception as e:  # noqa: BLE001 - reported below, never dropped
      if raising or first is not None:
        logging.error("while closing after an earlier error: %s", e)
      else:
        first = e
  if first is not None:
    raise first
