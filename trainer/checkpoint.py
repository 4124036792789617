"""Async Orbax checkpoints: one step holds the train state, the data position
(rows consumed: the same for every host), the run config and the run's counters. Local paths and gs://
alike.

A step counts only once Orbax has committed it (atomic rename locally, a
commit marker on GCS); `latest_step()` never returns a half-written one. A
save that fails raises `CheckpointSaveError` naming the step, the path and the
cause; the steps committed before it stay as they were.
"""

import contextlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from sharding import rules
from trainer.config import CheckpointConfig
from trainer.state import ParamsPlan, ShardedSetup

STATE, DATA, CONFIG, COUNTERS = "state", "data", "config", "counters"


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


def _plain_path(path) -> tuple[str, ...]:
  """A tree path as strings: Orbax's metadata keys every level by name."""
  return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
               for k in path)


def check_shapes(saved_tree, target_tree, where: str):
  """ValueError naming the first parameter whose saved shape differs."""
  saved = {_plain_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
  for path, target in jax.tree_util.tree_flatten_with_path(target_tree)[0]:
    name = "/".join(_plain_path(path))
    path = _plain_path(path)
    if path not in saved:
      raise ValueError(f"{where}: {name} is missing from the checkpoint; was it saved "
                       "by another architecture?")
    if tuple(saved[path].shape) != tuple(target.shape):
      raise ValueError(f"{where}: {name} has shape {tuple(saved[path].shape)} in the "
                       f"checkpoint but {tuple(target.shape)} in this model config")


class Checkpointer:
  """Saves and restores `workdir/checkpoints/<step>`."""

  def __init__(self, workdir: str, config: CheckpointConfig):
    self.directory = epath.Path(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.max_to_keep, keep_period=config.keep_period or None,
            enable_async_checkpointing=config.async_save, create=True),
        # Handlers up front, so a fresh manager can read metadata before any save.
        item_handlers={STATE: ocp.StandardCheckpointHandler(use_ocdbt=config.use_ocdbt),
                       DATA: ocp.JsonCheckpointHandler(),
                       CONFIG: ocp.JsonCheckpointHandler(),
                       COUNTERS: ocp.JsonCheckpointHandler()})
    self._in_flight = None  # the step of a save not yet known to be committed
    self._abandoned = False

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, config_json: dict[str, Any],
           counters: dict[str, int] | None = None) -> bool:
    """Starts an (async) save; returns at once. Nothing counts until committed.

    Waits for the previous save first, so that its failure is reported as
    that step's. `counters` (e.g. skipped steps) are restored with the step.
    """
    self.wait()
    items = {STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config_json)}
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
    for item in (STATE, CONFIG) + ((DATA,) if data_iterator is not None else ()):
      if not (where / item).exists():
        self._raise_damaged(step, f"{where / item} is missing")
    with self._naming_damage(step):
      saved = self.manager.item_metadata(step)[STATE]
    check_shapes(saved.tree if hasattr(saved, "tree") else saved, target,
                 f"checkpoint {where}")
    items = {STATE: ocp.args.StandardRestore(target), CONFIG: ocp.args.JsonRestore()}
    if (where / COUNTERS).exists():
      items[COUNTERS] = ocp.args.JsonRestore()
    with self._naming_damage(step):
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if data_iterator is not None:
      # Apart from the arrays: the data pipeline's own errors (another
      # sequence length, seed or store) are already clear.
      data_iterator.set_state(self.manager.restore(step, args=ocp.args.Composite(
          **{DATA: ocp.args.JsonRestore()}))[DATA])
    return restored[STATE], restored[CONFIG], dict(restored.get(COUNTERS) or {})

  @contextlib.contextmanager
  def _naming_damage(self, step: int):
    try:
      yield
    except Exception as e:  # noqa: BLE001 - any read error means a damaged step here
      # TensorStore appends its whole spec (about 1 kB of JSON): the cause is before it.
      cause = " ".join(str(e).split(" [tensorstore_spec=")[0].split())
      self._raise_damaged(step, f"{type(e).__name__}: {cause[:400]}", e)

  def _raise_damaged(self, step: int, cause: str, error: Exception | None = None):
    others = [s for s in self.manager.all_steps() if s != step]
    advice = (f"delete {self.directory / str(step)} to resume from step {max(others)}, "
              "or " if others else "")
    raise ValueError(
        f"checkpoint {self.directory / str(step)} cannot be read: {cause}. It is "
        f"damaged (a truncated or missing file); {advice}start afresh in another "
        f"--workdir. Committed steps here: {sorted(self.manager.all_steps())}") from error

  def config_only_args(self):
    """Restore args that read only the run config of a step."""
    return ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})

  def close(self, timeout_s: float | None = None):
    """Waits for the last save to commit (CheckpointSaveError if it failed);
    with `timeout_s`, at most that long: then the save is abandoned."""
    if self._abandoned:
      return
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
  # The item's own handler: a Checkpointer would look for the step's metadata
  # inside the item directory and warn that it is missing.
  item_dir, handler = epath.Path(path) / STATE, ocp.PyTreeCheckpointHandler()
  try:
    saved = handler.metadata(item_dir)
    saved_tree = getattr(saved, "tree", saved)
    check_shapes({"params": saved_tree["params"]}, target, f"checkpoint {path}")
    restored = handler.restore(item_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  finally:
    handler.close()
  return restored["params"]


def restore_state(path: str, setup: ShardedSetup):
  """The full train state from a checkpoint step directory (`--init_from`);
  the data position is not taken from it."""
  target = rules.with_shardings(setup.abstract, setup.shardings)
  item_dir, handler = epath.Path(path) / STATE, ocp.StandardCheckpointHandler()
  try:
    saved = handler.metadata(item_dir)
    check_shapes(getattr(saved, "tree", saved), target, f"checkpoint {path}")
    return handler.restore(item_dir, args=ocp.args.StandardRestore(target))
  finally:
    handler.close()
