"""A saved run opened for inference: the step, its config, and its parameters
only, on this machine's devices (evaluation, sampling, lm-eval)."""

import jax
from etils import epath

from common import storage
from sharding.config import MeshConfig
from sharding.mesh import make_mesh
from trainer import config as config_lib
from trainer.checkpoint import Checkpointer, restore_params
from trainer.state import plan_params


def find_step(checkpointer: Checkpointer, step: int | None) -> int:
  """The requested step, or the latest; a clear error naming what exists."""
  steps = list(checkpointer.manager.all_steps())
  if not steps:
    raise ValueError(f"no committed checkpoint in {checkpointer.directory}")
  if step is None:
    return max(steps)
  if step not in steps:
    raise ValueError(f"--step={step} is not in {checkpointer.directory}; saved steps: {sorted(steps)}")
  return step


def open_checkpoint(workdir: str, step: int | None, overrides: dict) -> tuple:
  """(checkpointer, step, the run config of that step with `overrides`
  {"section.field": value} applied, the training sequence length)."""
  storage.check_gcs_reachable(workdir, "--workdir")
  if not epath.Path(workdir).exists():
    raise ValueError(f"--workdir={workdir} does not exist")
  checkpointer = Checkpointer(workdir, config_lib.CheckpointConfig())
  step = find_step(checkpointer, step)
  values = checkpointer.manager.restore(step, args=checkpointer.config_only_args())["config"]
  train_seq_len = values["data"]["seq_len"]
  config = config_lib.from_dict(config_lib.with_overrides(values, overrides))
  return checkpointer, step, config, train_seq_len


def data_parallel_mesh() -> jax.sharding.Mesh:
  """All of this machine's devices on the batch: any device or process count
  reads the parameters, whatever the mesh at save time."""
  return make_mesh(MeshConfig(ici_data=-1))


def restore_here(checkpointer: Checkpointer, step: int, config, mesh) -> tuple:
  """(plan, params): parameters only (no optimizer is built, its state never
  read), on `mesh`."""
  plan = plan_params(config.model, mesh)
  return plan, restore_params(str(checkpointer.directory / str(step)), plan)
