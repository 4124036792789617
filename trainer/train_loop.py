"""The training loop: restore or initialise, step, log, checkpoint, stop cleanly."""

import signal
import sys
import threading
import time
import uuid
from typing import Callable, Iterator

import jax
import numpy as np
from absl import logging
from etils import epath

from common import storage
from model.flops import train_flops
from sharding import rules
from trainer.checkpoint import (Checkpointer, check_step_dir, committed_steps, restore_params,
                                restore_state)
from trainer import config as config_lib
from trainer import goodput
from trainer import lm_eval_lib
from trainer.config import Config, NonFinite, OnCorrupt, SpikeAction
from trainer.integrity import CorruptCheckpointError
from trainer.local_tier import LocalTierError
from trainer.scoring import Scorer, score_sources, summary
from trainer.metrics import MetricsWriter
from trainer.progress import Progress
from trainer.spikes import LossSpikeError, SpikeGuard
from trainer.program import Program, build_program
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


class PreemptionTimeoutError(RuntimeError):
  """SIGTERM came, and a save did not commit within
  `checkpoint.preemption_grace_s` of it; the last committed step stands."""


class StopFlag:
  """Set by SIGTERM (preemption); the loop checks it at step boundaries.

  `signal_time` (time.monotonic()) is when SIGTERM came: the grace period
  for committing the last step counts from it. A flag set otherwise (e.g.
  a subclass that stops early) has none and waits for its save as usual.
  """

  def __init__(self):
    self.event = threading.Event()
    self.signal_time = None

  def install(self):
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def _on_sigterm(self, signum, frame):
    del signum, frame
    if self.signal_time is None:
      self.signal_time = time.monotonic()
    self.event.set()

  def __bool__(self):
    return self.event.is_set()


def evaluation_start(state) -> float:
  """The time an evaluation starts, once the queued training steps are done:
  their time belongs to training, the rest to the evaluation."""
  jax.block_until_ready(state)
  return time.perf_counter()


def barrier(name: str, timeout_minutes: int = 30):
  """All processes wait here (the coordination service, not a collective)."""
  if jax.process_count() > 1:
    from jax._src import distributed  # the public API has no timed barrier
    distributed.global_state.client.wait_at_barrier(name, timeout_minutes * 60_000)


def check_workdir(workdir: str) -> epath.Path:
  """Creates the workdir if needed; a clear error if it cannot be written."""
  path = epath.Path(workdir)
  if workdir.startswith("gs://"):
    storage.check_gcs_reachable(workdir, "--workdir")
    bucket = "gs://" + workdir[len("gs://"):].split("/", 1)[0]
    if not epath.Path(bucket).exists():
      raise ValueError(f"--workdir={workdir}: the bucket {bucket} does not exist or these "
                       "credentials cannot see it; create it (infra/) or fix the path")
  try:
    path.mkdir(parents=True, exist_ok=True)
    # One probe per process: hosts sharing a workdir must not delete each other's.
    probe = path / f".write_probe_{uuid.uuid4().hex}"
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # noqa: BLE001 - any storage error means the same here
    raise ValueError(f"--workdir={workdir} is not a writable directory: {e}") from e
  return path


def initial_state(config: Config, program: Program, checkpointer, data_iterator, init_from,
                  init_params_from, progress: Progress) -> tuple[TrainState, dict]:
  """Restore order: this run's local tier, if it holds a step at least as new
  as the workdir's (trainer/local_tier.py; if it cannot be read: the workdir)
  -> this run's latest step -> --init_from (a full state) ->
  --init_params_from (parameters only) -> fresh initialisation. A latest step
  that is corrupt stops the run, or with `checkpoint.on_corrupt=fallback` is
  set aside for the one before it (none left: an error, not a fresh start).

  Returns (state, counters): the counters (skipped steps) of the step
  resumed from, {} otherwise."""
  set_aside = []
  if (local := checkpointer.newest_local()) is not None:
    progress.event(f"resuming from local step {local} ({checkpointer.local.directory})")
    try:
      state, _, counters = checkpointer.restore_local(local, program.setup, data_iterator)
      if checkpointer.local.fetched_back:
        progress.event(f"processes {checkpointer.local.fetched_back} had lost their local "
                       "step: fetched back from the copies on the next host")
      return state, counters
    except (LocalTierError, CorruptCheckpointError) as e:  # alike on every process
      progress.event(f"{e}; resuming from the gs:// tier instead")
  while (latest := checkpointer.latest_step()) is not None:
    progress.event(f"resuming from {checkpointer.directory}/{latest}")
    try:
      state, _, counters = checkpointer.restore(latest, program.setup, data_iterator)
      return state, counters
    except CorruptCheckpointError as e:
      if config.checkpoint.on_corrupt != OnCorrupt.FALLBACK:
        raise
      moved = checkpointer.set_aside(latest)
      progress.event(f"{e}\n  set aside as {moved} (checkpoint.on_corrupt=fallback); "
                     "trying the step before it")
      barrier(f"griffin: step {latest} set aside")
      checkpointer.reload()
      set_aside.append(latest)
  if set_aside:
    raise CorruptCheckpointError(
        f"every committed step of {checkpointer.directory} was corrupt and is set aside "
        f"({set_aside}); start afresh in another --workdir, or --init_params_from a "
        "step of another run")
  if init_from:
    progress.event(f"initialising the full state from {init_from}")
    return restore_state(init_from, program.setup), {}
  state = program.init_state(config)
  if init_params_from:
    progress.event(f"initialising parameters from {init_params_from}")
    state = state._replace(params=restore_params(init_params_from, program.setup.params))
  return state, {}


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
  scorer = Scorer(program.setup.graphdef, mesh) if eval_data and config.run.eval_every_steps else None

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
    if scorer and step % config.run.eval_every_steps == 0:
      start = evaluation_start(state)
      sums, by_source = score_sources(scorer, state.params, eval_data(),
                                      config.run.eval_steps, config.data.seq_len)
      result = summary(*sums)
      seconds = time.perf_counter() - start
      stderr = f" ± {result['loss_stderr']:.4f}" if "loss_stderr" in result else ""
      progress.event(f"eval at step {step}: loss {result['loss']:.4f}{stderr}, perplexity "
                     f"{result['perplexity']:.2f}, accuracy {result['accuracy']:.4f} "
                     f"({seconds:.1f} s)")
      writer.write_eval(step, {"eval_loss": result["loss"],
                               "eval_perplexity": result["perplexity"],
                               "eval_accuracy": result["accuracy"],
                               **({"eval_loss_stderr": result["loss_stderr"]}
                                  if "loss_stderr" in result else {}),
                               **{f"eval_loss_{name}": source["loss"]
                                  for name, source in by_source.items()},
                               "eval_seconds": seconds}, seconds)
      recorder.add("evaluation", seconds)
    if harness and step % config.run.lm_eval_every_steps == 0:
      start = evaluation_start(state)
      scores = harness(state.params, program.setup.graphdef, mesh)
      seconds = time.perf_counter() - start
      progress.event(f"lm-eval at step {step}: " + ", ".join(
          f"{k.removeprefix('lm_eval/')} {v:.4f}" for k, v in scores.items())
          + f" ({seconds:.1f} s)")
      writer.write_eval(step, {**scores, "lm_eval_seconds": seconds}, seconds)
      recorder.add("evaluation", seconds)
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


def commit_within_grace(checkpointer: Checkpointer, stop: StopFlag, grace_s: float):
  """After SIGTERM: waits for the save in flight to commit, at most until
  `grace_s` seconds after the signal; returns its step (None: there was
  none). PreemptionTimeoutError if it did not commit in time."""
  step = checkpointer.in_flight
  if checkpointer.wait(deadline=stop.signal_time + grace_s):
    return step
  checkpointer.abandon()
  raise PreemptionTimeoutError(
      f"SIGTERM: step {step} did not commit to {checkpointer.directory / str(step)} "
      f"within checkpoint.preemption_grace_s={grace_s} s of the signal; it does not "
      f"count, the last committed step is {checkpointer.last_committed()}. Storage was "
      "slow or unreachable; a longer grace (below the scheduler's notice) or more "
      "frequent checkpoint.save_every_steps loses less.")
