"""Evaluation of a saved checkpoint: validation loss and perplexity."""

import json
import math

import jax
from absl import logging
from etils import epath
from flax import nnx

from sharding import rules
from sharding.config import MeshConfig
from sharding.mesh import make_mesh
from trainer import config as config_lib
from trainer.checkpoint import Checkpointer, restore_params
from trainer.loss import next_token_nll
from trainer.optimizer import make_optimizer
from trainer.state import plan_state


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


def evaluate(workdir: str, step: int | None, eval_batches: int, make_batches) -> dict:
  """Restores parameters only (never the optimizer state) onto this machine's
  devices, data-parallel, and scores `eval_batches` validation batches.

  `make_batches(config, n)` yields host batches {"tokens", "segment_pos"}.
  Writes `eval_<step>.json` in the workdir and returns the numbers.
  """
  if not epath.Path(workdir).exists():
    raise ValueError(f"--workdir={workdir} does not exist")
  checkpointer = Checkpointer(workdir, config_lib.CheckpointConfig())
  step = find_step(checkpointer, step)
  saved = checkpointer.manager.restore(step, args=checkpointer.config_only_args())
  config = config_lib.from_dict(saved["config"])
  # Any device count: the saved mesh is not needed to read the parameters.
  mesh = make_mesh(MeshConfig(ici_data=-1))
  rules.check_batch_divisible(config.data.global_batch_size, mesh)
  setup = plan_state(config.model, make_optimizer(config.optimizer, config.run.steps), mesh)
  params = restore_params(str(checkpointer.directory / str(step)), setup)
  row = rules.batch_sharding(mesh)

  @jax.jit
  def nll_sum_and_count(params, tokens_BT, segment_pos_BT):
    logits_BTV, _ = nnx.merge(setup.graphdef, params)(tokens_BT, segment_pos_BT)
    return next_token_nll(logits_BTV, tokens_BT, segment_pos_BT)

  total, count = 0.0, 0
  batches = make_batches(config, eval_batches)
  with jax.set_mesh(mesh), rules.activation_rules():
    for _ in range(eval_batches):
      host_batch = next(batches)
      arrays = [jax.make_array_from_process_local_data(row, host_batch[k])
                for k in ("tokens", "segment_pos")]
      s, n = nll_sum_and_count(params, *arrays)
      total, count = total + float(s), count + int(n)
  loss = total / max(count, 1)
  result = {"step": step, "loss": loss, "perplexity": math.exp(loss), "tokens": count}
  if jax.process_index() == 0:
    (epath.Path(workdir) / f"eval_{step}.json").write_text(json.dumps(result, indent=2))
  logging.info("evaluation of step %d: %s", step, result)
  return result
