"""Async Orbax checkpoints: one step holds the train state, the data position
(rows consumed: the same for every host), the run config, the run's counters
and a checksum of every array (`trainer/integrity.py`). Local paths and gs://
alike.

A step that cannot be read, or whose arrays do not match their checksums, is
a `CorruptCheckpointError` naming the step and what would work.

A step counts only once Orbax has committed it (atomic rename locally, a
commit marker on GCS); `latest_step()` never returns a half-written one. A
save that fails raises `CheckpointSaveError` naming the step, the path and the
cause; the steps committed before it stay as they were.
"""

import contextlib
import hashlib
import logging as std_logging
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from sharding import rules
from trainer import integrity
from trainer.config import CheckpointConfig
from trainer.integrity import CorruptCheckpointError
from trainer.local_tier import LocalTier
from trainer.state import ParamsPlan, ShardedSetup

STATE, DATA, CONFIG, COUNTERS, CHECKSUMS = "state", "data", "config", "counters", "checksums"


class CheckpointSaveError(RuntimeError):
  """A step could not be written (storage full, denied or unreachable)."""


def committed_steps(directory) -> list[int]:
  """The steps a restart would see: committed ones only (a half-written step
  is a temporary directory locally, or lacks its commit marker on GCS)."""
  # Orbax's own listing of finalized steps; a read-only CheckpointManager
  # would give the same and log three warnings each time.
  return sorted(ocp.utils.checkpoint_steps(epath.Path(directory)))


def check_step_dir(path: str, flag: str = ""):
  """ValueError unless `path` is a checkpoint step directory (it holds
  `state/`); `flag` is the command-line flag that gave it, if one did."""
  step_dir = epath.Path(path)
  if (step_dir / STATE).exists():
    return
  found = ""
  if step_dir.parent.exists():
    steps = sorted(int(p.name) for p in step_dir.parent.iterdir() if p.name.isdigit())
    found = f"; the step directories in {step_dir.parent}: {steps}"
  raise ValueError(f"{f'{flag}=' if flag else ''}{path} is not a checkpoint step directory "
                   f"(no {STATE}/ in it); give <workdir>/checkpoints/<step>{found}")


def damaged(step_dir, cause: str, advice: str) -> CorruptCheckpointError:
  """The one error for a step that cannot be read, with what would work."""
  return CorruptCheckpointError(f"checkpoint {step_dir} cannot be read: {cause}. It is "
                                f"damaged (a truncated, corrupt or missing file); {advice}")


@contextlib.contextmanager
def naming_damage(step_dir, advice, part: str = ""):
  """Any read error inside becomes `damaged(...)`, naming the `part` read if
  given; `advice()` says what would work (called only on an error: it may
  list the storage)."""
  try:
    yield
  except CorruptCheckpointError as e:  # a checksum that does not match
    raise CorruptCheckpointError(f"{e}; {advice()}") from e
  except Exception as e:  # noqa: BLE001 - any read error means a damaged step here
    # TensorStore appends its whole spec (about 1 kB of JSON): the cause is before it.
    cause = " ".join(str(e).split(" [tensorstore_spec=")[0].split())
    where = f"{part}: " if part else ""
    raise damaged(step_dir, f"{where}{type(e).__name__}: {cause[:400]}", advice()) from e


def _other_steps_advice(step_dir) -> str:
  """For a step given by path (--init_from, evaluation): the steps beside it."""
  step_dir = epath.Path(step_dir)
  steps = committed_steps(step_dir.parent) if step_dir.parent.exists() else []
  return f"give another step; the committed steps beside it: {steps}"


def check_shapes(saved_tree, target_tree, where: str):
  """ValueError naming the first parameter whose saved shape differs."""
  saved = {integrity.name(p): v for p, v in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
  for path, target in jax.tree_util.tree_flatten_with_path(target_tree)[0]:
    name = path = integrity.name(path)
    if path not in saved:
      raise ValueError(f"{where}: {name} is missing from the checkpoint; was it saved "
                       "by another architecture?")
    if tuple(saved[path].shape) != tuple(target.shape):
      raise ValueError(f"{where}: {name} has shape {tuple(saved[path].shape)} in the "
                       f"checkpoint but {tuple(target.shape)} in this model config")


def local_root(local_dir: str, workdir: str) -> str:
  """This run's part of `checkpoint.local_dir`: a name from the workdir, so
  that runs sharing a RAM disk never read each other's steps."""
  return f"{local_dir}/run-{hashlib.sha256(workdir.encode()).hexdigest()[:12]}"


def _no_replica_parallel_saves_on_cpu():
  """Orbax saves a replicated array from all its replicas at once, each
  writing a slice it cuts on device: one small program per array shape and
  device, about 70 compiles in every new process for a small Griffin. CPU
  devices share one memory, so nothing is gained there (Orbax makes the same
  exception for GPUs); accelerators keep Orbax's default."""
  if jax.default_backend() == "cpu":
    # Not Orbax's warning that its default is replaced. The absl logger's own
    # level is restored as it was (usually unset: following the root logger's);
    # set_verbosity(get_verbosity()) would pin it at the effective level.
    absl_logger = std_logging.getLogger("absl")
    previous = absl_logger.level
    absl_logger.setLevel(std_logging.ERROR)
    try:
      ocp.type_handlers.register_type_handler(
          jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
      absl_logger.setLevel(previous)


class Checkpointer:
  """Saves and restores `workdir/checkpoints/<step>`, and with
  `config.local_dir` the fast local tier (`trainer/local_tier.py`) too."""

  def __init__(self, workdir: str, config: CheckpointConfig, mesh=None):
    _no_replica_parallel_saves_on_cpu()
    self.directory = epath.Path(workdir) / "checkpoints"
    self.local = (LocalTier(local_root(config.local_dir, workdir), mesh,
                            config.local_max_to_keep) if config.local_dir else None)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.max_to_keep, keep_period=config.keep_period or None,
            enable_async_checkpointing=config.async_save, create=True),
        # Handlers up front, so a fresh manager can read metadata before any save.
        item_handlers={STATE: ocp.StandardCheckpointHandler(use_ocdbt=config.use_ocdbt),
                       DATA: ocp.JsonCheckpointHandler(),
                       CONFIG: ocp.JsonCheckpointHandler(),
                       COUNTERS: ocp.JsonCheckpointHandler(),
                       CHECKSUMS: ocp.JsonCheckpointHandler()})
    self._in_flight = None  # the step of a save not yet known to be committed
    self._abandoned = False

  def latest_step(self) -> int | None:
    """The newest step, counting one still being saved (Orbax's view)."""
    return self.manager.latest_step()

  def last_committed(self, wait_s: float = 0.0) -> int | None:
    """The newest step a restart would resume from; a save in flight does
    not count. With `wait_s`, that save first gets that long to commit (one
    that fails or is still writing then is simply not counted)."""
    if wait_s and self._in_flight is not None:
      with contextlib.suppress(CheckpointSaveError):
        self.wait(deadline=time.monotonic() + wait_s)
    steps = committed_steps(self.directory)
    return steps[-1] if steps else None

  def save(self, step: int, state, data_iterator, config_json: dict[str, Any],
           counters: dict[str, int] | None = None) -> bool:
    """Starts an (async) save; returns at once. Nothing counts until committed.

    Waits for the previous save first, so that its failure is reported as
    that step's. `counters` (e.g. skipped steps) are restored with the step.
    """
    self.wait()
    items = {STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config_json),
             CHECKSUMS: ocp.args.JsonSave(integrity.checksums(state))}
    if data_iterator is not None:
      # The data position is global (rows consumed, the same on every host):
      # one JSON item, written by the primary process.
      items[DATA] = ocp.args.JsonSave(data_iterator.get_state())
    if counters is not None:
      items[COUNTERS] = ocp.args.JsonSave(counters)
    with self._naming_failures(step):
      saved = self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._in_flight = step
    return saved

  def save_local(self, step: int, state, data_iterator, config_json: dict[str, Any],
                 counters: dict[str, int]):
    """Starts an async save of `step` to the local tier, with what `save`
    writes beside the state."""
    self.local.save(step, state, {
        CONFIG: config_json, CHECKSUMS: integrity.checksums(state), COUNTERS: counters,
        DATA: data_iterator.get_state() if data_iterator is not None else None})

  def discard_local_after(self, step: int):
    """The local tier forgets steps newer than `step`, where the run goes on
    (after a restore from either tier, or a rollback)."""
    if self.local is not None:
      self.local.discard_after(step)

  def newest_local(self) -> int | None:
    """The newest step the local tier can restore on every process, if it is
    at least as new as the newest committed gs:// step (a collective)."""
    if self.local is None:
      return None
    complete = self.local.holdings().complete()
    persistent = self.last_committed()
    if complete and (persistent is None or complete[-1] >= persistent):
      return complete[-1]
    return None

  def restore_local(self, step: int, setup: ShardedSetup, data_iterator=None):
    """What `restore` gives, from the local tier; LocalTierError or
    CorruptCheckpointError (on every process alike) if it cannot."""
    target = rules.with_shardings(setup.abstract, setup.shardings)
    state, meta = self.local.restore(step, target)
    integrity.verify(meta[CHECKSUMS], state, f"local step {step} in {self.local.directory}")
    if data_iterator is not None:
      data_iterator.set_state(meta[DATA])
    return state, meta[CONFIG], dict(meta[COUNTERS])

  @property
  def in_flight(self) -> int | None:
    """The step of the last save, until it is known to be committed."""
    return self._in_flight

  def wait(self, deadline: float | None = None) -> bool:
    """Blocks until the last save is committed and returns True; with a
    `deadline` (a `time.monotonic()` value), returns False if it passes first.
    Raises CheckpointSaveError if the save failed."""
    if self._in_flight is None:
      return True
    if deadline is not None:
      while self.manager.is_saving_in_progress():
        if time.monotonic() >= deadline:
          return False
        time.sleep(0.02)
    with self._naming_failures(self._in_flight):
      self.manager.wait_until_finished()
    self._in_flight = None
    return True

  @contextlib.contextmanager
  def _naming_failures(self, step: int):
    """Turns a storage error of `step` into one that says what it means."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - every storage error means the same here
      self._in_flight = None
      try:
        kept = committed_steps(self.directory)
        kept = (f"the last committed step is {kept[-1]} ({self.directory / str(kept[-1])}), "
                "intact" if kept else "no step was committed before it")
      except Exception as listing:  # noqa: BLE001 - storage may be unreachable
        kept = f"the committed steps could not be listed either ({listing})"
      cause = " ".join(f"{type(e).__name__}: {e}".split())[:1000]
      raise CheckpointSaveError(
          f"checkpoint step {step} was not saved to {self.directory / str(step)}: {cause}. "
          f"It does not count; {kept}. Free space, fix the permissions or the "
          "bucket, then run the same command again: it resumes from the last "
          "committed step.") from e

  def restore(self, step: int, setup: ShardedSetup, data_iterator=None):
    """The full state of `step`, resharded for `setup`; the data iterator, if
    given, is moved to the saved position. Returns (state, config_json,
    counters); counters are {} for a checkpoint saved without them."""
    where = self.directory / str(step)
    target = rules.with_shardings(setup.abstract, setup.shardings)
    # The tree's metadata too: without it Orbax would see an empty tree.
    for part in (STATE, f"{STATE}/_METADATA", CONFIG) + (
        (DATA,) if data_iterator is not None else ()):
      if not (where / part).exists():
        self._raise_damaged(step, f"{where / part} is missing")
    with self._naming_damage(step):
      saved = self.manager.item_metadata(step)[STATE]
    check_shapes(saved.tree if hasattr(saved, "tree") else saved, target,
                 f"checkpoint {where}")
    items = {STATE: ocp.args.StandardRestore(target), CONFIG: ocp.args.JsonRestore()}
    for optional in (COUNTERS, CHECKSUMS):  # steps saved before these existed lack them
      if (where / optional).exists():
        items[optional] = ocp.args.JsonRestore()
    with self._naming_damage(step):
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if CHECKSUMS in restored:
      with self._naming_damage(step):
        integrity.verify(restored[CHECKSUMS], restored[STATE], f"checkpoint {where}")
    if data_iterator is not None:
      # Apart from the arrays: the data pipeline's own errors (another
      # sequence length, seed or store) are already clear.
      with self._naming_damage(step, str(where / DATA)):
        position = self.manager.restore(step, args=ocp.args.Composite(
            **{DATA: ocp.args.JsonRestore()}))[DATA]
      data_iterator.set_state(position)
    return restored[STATE], restored[CONFIG], dict(restored.get(COUNTERS) or {})

  def _naming_damage(self, step: int, part: str = ""):
    return naming_damage(self.directory / str(step), lambda: self._resume_advice(step), part)

  def _raise_damaged(self, step: int, cause: str):
    raise damaged(self.directory / str(step), cause, self._resume_advice(step))

  def _resume_advice(self, step: int) -> str:
    others = [s for s in self.manager.all_steps() if s != step]
    advice = (f"delete {self.directory / str(step)} to resume from step {max(others)}, "
              "or " if others else "")
    fallback = ("set checkpoint.on_corrupt=fallback to set it aside and resume from the "
                "newest intact step, or " if others else "")
    return (f"{advice}{fallback}start afresh in another --workdir. Committed steps here: "
            f"{sorted(self.manager.all_steps())}")

  def set_aside(self, step: int) -> epath.Path:
    """Moves a corrupt step out of the way (a copy on GCS) so that neither a
    restart nor the next save of that step number sees it; returns where it
    went. Process 0 moves it; every process forgets it."""
    target = self.directory / f"{step}.corrupt-{int(time.time())}"
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(target)
    return target

  def reload(self):
    """Re-reads the committed steps (after `set_aside`, once every process is past it)."""
    self.manager.reload()

  def config_only_args(self):
    """Restore args that read only the run config of a step."""
    return ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})

  def close(self, timeout_s: float | None = None):
    """Waits for the last save to commit (CheckpointSaveError if it failed);
    with `timeout_s`, at most that long: then the save is abandoned."""
    if self._abandoned:
      return
    if self.local is not None:
      self.local.close()
    if timeout_s is not None and not self.wait(deadline=time.monotonic() + timeout_s):
      logging.error("checkpoint step %d did not commit to %s within %s s of the run "
                    "stopping; abandoned, it does not count", self._in_flight,
                    self.directory / str(self._in_flight), timeout_s)
      self._abandoned = True
      return
    try:
      self.wait()
    finally:
      self.manager.close()

  def abandon(self):
    """Gives up on a save in flight (preemption ran out of time): `close`
    returns at once, and the process is expected to exit without waiting."""
    self._abandoned = True


def restore_params(path: str, plan: ParamsPlan):
  """Parameters only from a checkpoint step directory (e.g. `--init_params_from`),
  straight into the shards of `plan`; the optimizer state is never read."""
  target = {"params": rules.with_shardings(plan.abstract, plan.shardings)}
  return _restore_item(path, target, ocp.PyTreeCheckpointHandler(), lambda: ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))["params"]


def restore_state(path: str, setup: ShardedSetup):
  """The full train state from a checkpoint step directory (`--init_from`);
  the data position is not taken from it."""
  target = rules.with_shardings(setup.abstract, setup.shardings)
  return _restore_item(path, target, ocp.StandardCheckpointHandler(),
                       lambda: ocp.args.StandardRestore(target))


def _restore_item(path: str, target, handler, restore_args):
  """The `target` part of the state item of the step directory `path`, read by
  the item's own `handler` (a Checkpointer would look for the step's metadata
  inside the item directory and warn that it is missing), shape-checked and
  verified against the step's checksums."""
  step_dir = epath.Path(path)
  item_dir = step_dir / STATE
  advice = lambda: _other_steps_advice(path)  # noqa: E731
  if not (item_dir / "_METADATA").exists():  # Orbax would read an empty tree
    raise damaged(path, f"{item_dir / '_METADATA'} is missing", advice())
  try:
    with naming_damage(path, advice):
      saved = handler.metadata(item_dir)
    saved = getattr(saved, "tree", saved)
    check_shapes(saved, target, f"checkpoint {path}")
    with naming_damage(path, advice):
      restored = handler.restore(item_dir, args=restore_args())
      if (step_dir / CHECKSUMS).exists():
        sums = ocp.JsonCheckpointHandler().restore(step_dir / CHECKSUMS)
        integrity.verify(sums, restored, f"checkpoint {path}")
  finally:
    handler.close()
  return restored
