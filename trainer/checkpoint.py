"""Async Orbax checkpoints: one step holds the train state, every host's data
iterator state and the run config. Local paths and gs:// alike.

A step counts only once Orbax has committed it (atomic rename locally, a
commit marker on GCS); `latest_step()` never returns a half-written one.
"""

from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from trainer.config import CheckpointConfig
from trainer.state import ShardedSetup

STATE, DATA, CONFIG = "state", "data", "config"


def restore_target(setup: ShardedSetup):
  """The abstract state with its shardings: Orbax restores straight into the
  shards of the current mesh, whatever mesh saved it."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      setup.abstract, setup.shardings)


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
                       DATA: grain.checkpoint.CheckpointHandler(),
                       CONFIG: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, config_json: dict[str, Any]) -> bool:
    """Starts an (async) save; returns at once. Nothing counts until committed."""
    items = {STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config_json)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, setup: ShardedSetup, data_iterator=None):
    """The full state of `step`, resharded for `setup`; the data iterator, if
    given, is moved to the saved position. Returns (state, config_json)."""
    target = restore_target(setup)
    saved = self.manager.item_metadata(step)[STATE]
    check_shapes(saved.tree if hasattr(saved, "tree") else saved, target,
                 f"checkpoint {self.directory / str(step)}")
    items = {STATE: ocp.args.StandardRestore(target), CONFIG: ocp.args.JsonRestore()}
    if data_iterator is not None:
      self._check_process_count(step)
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE], restored[CONFIG]

  def _check_process_count(self, step: int):
    """Grain keeps one iterator state per process (`process_<i>-of-<n>.json`):
    a run with another process count cannot continue the same data order."""
    names = [p.name for p in (self.directory / str(step) / DATA).glob("process_*-of-*.json")]
    counts = {int(name.rsplit("-of-", 1)[1].split(".")[0]) for name in names}
    if counts and counts != {jax.process_count()}:
      raise ValueError(
          f"checkpoint {self.directory / str(step)} holds the data position of "
          f"{sorted(counts)} process(es), but this run has {jax.process_count()}; "
          "resume with the same process count, or start the data afresh with "
          "--init_from=<that step dir> (keeps the model and optimizer state)")

  def config_only_args(self):
    """Restore args that read only the run config of a step."""
    return ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})

  def wait(self):
    """Blocks until the last save is committed."""
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params(path: str, setup: ShardedSetup):
  """Parameters only from a checkpoint step directory (e.g. `--init_params_from`);
  the optimizer state is never read."""
  target = {"params": restore_target(setup).params}
  step_dir = epath.Path(path) / STATE
  checkpointer = ocp.PyTreeCheckpointer()
  saved = checkpointer.metadata(step_dir)
  saved = getattr(saved, "item_metadata", saved)
  saved_tree = getattr(saved, "tree", saved)
  check_shapes({"params": saved_tree["params"]}, target, f"checkpoint {path}")
  restored = checkpointer.restore(step_dir, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  return restored["params"]


def restore_state(path: str, setup: ShardedSetup):
  """The full train state from a checkpoint step directory (`--init_from`);
  the data position is not taken from it."""
  target = restore_target(setup)
  step_dir = epath.Path(path) / STATE
  checkpointer = ocp.StandardCheckpointer()
  saved = checkpointer.metadata(step_dir)
  saved = getattr(saved, "item_metadata", saved)
  check_shapes(getattr(saved, "tree", saved), target, f"checkpoint {path}")
  return checkpointer.restore(step_dir, target)
