"""Where a run starts: its workdir checked, then the restore order of
`initial_state` (local tier, workdir, --init_from, --init_params_from, fresh)."""

import uuid

import jax
from etils import epath

from common import storage
from trainer.checkpoint import restore_params, restore_state
from trainer.config import Config, OnCorrupt
from trainer.integrity import CorruptCheckpointError
from trainer.local_tier import LocalTierError
from trainer.program import Program
from trainer.progress import Progress
from trainer.state import TrainState


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
