"""Evaluation of a saved checkpoint: validation loss, perplexity and
next-token accuracy, and the loss by document position at lengths beyond
training (the paper's Fig. 5)."""

import dataclasses
import functools
import math

import jax
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from sharding import rules
from sharding.config import MeshConfig
from sharding.mesh import make_mesh
from trainer import config as config_lib
from trainer import eval_report
from trainer.checkpoint import Checkpointer, restore_params
from trainer.loss import next_token_correct_by_position, next_token_nll_by_position
from trainer.optimizer import make_optimizer
from trainer.state import plan_state
from trainer.train_step import device_batch


class Scorer:
  """Sums of next-token NLL, counts of targets and of correct (argmax)
  predictions, by document position, over batches. Only targets the batch's
  `loss_mask` counts are scored (all in-document targets without one)."""

  def __init__(self, graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh):
    self.mesh = mesh
    self.row = rules.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    @functools.partial(jax.jit, out_shardings=replicated)  # every process reads them
    def by_position(params, tokens_BT, segment_pos_BT, loss_mask_BT):
      logits_BTV, _ = nnx.merge(graphdef, params)(tokens_BT, segment_pos_BT)
      sum_T, count_T = next_token_nll_by_position(logits_BTV, tokens_BT, segment_pos_BT,
                                                  loss_mask_BT)
      correct_T = next_token_correct_by_position(logits_BTV, tokens_BT, segment_pos_BT,
                                                 loss_mask_BT)
      return sum_T, count_T, correct_T

    self._by_position = by_position

  def __call__(self, params, batches, num_batches: int, seq_len: int):
    """(sum_T, count_T, correct_T) in float64 / int64 / int64 over
    `num_batches` host batches."""
    sum_T = np.zeros(seq_len)
    count_T, correct_T = np.zeros(seq_len, np.int64), np.zeros(seq_len, np.int64)
    with jax.set_mesh(self.mesh), rules.activation_rules():
      for _ in range(num_batches):
        s_T, n_T, c_T = jax.device_get(self._by_position(
            params, *device_batch(self.row, next(batches))))
        sum_T += s_T
        count_T += n_T
        correct_T += c_T
    return sum_T, count_T, correct_T


def score_sources(scorer: Scorer, params, batches, num_batches: int, seq_len: int):
  """`scorer` over `batches`, an iterator or {source: iterator}: the sums over
  all of them, and {source: summary} when there are several sources."""
  if not isinstance(batches, dict):
    return scorer(params, batches, num_batches, seq_len), {}
  by_source = {name: scorer(params, it, num_batches, seq_len) for name, it in batches.items()}
  total = tuple(sum(parts) for parts in zip(*by_source.values()))
  if len(by_source) == 1:
    return total, {}
  return total, {name: summary(*sums) for name, sums in by_source.items()}


def summary(sum_T, count_T, correct_T) -> dict:
  """Mean NLL, perplexity, the number of targets, and next-token accuracy
  (the fraction whose argmax is the target)."""
  count = max(int(count_T.sum()), 1)
  loss = float(sum_T.sum() / count)
  return {"loss": loss, "perplexity": math.exp(loss), "tokens": int(count_T.sum()),
          "accuracy": float(correct_T.sum() / count)}


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
  if not epath.Path(workdir).exists():
    raise ValueError(f"--workdir={workdir} does not exist")
  checkpointer = Checkpointer(workdir, config_lib.CheckpointConfig())
  step = find_step(checkpointer, step)
  values = checkpointer.manager.restore(step, args=checkpointer.config_only_args())["config"]
  train_seq_len = values["data"]["seq_len"]
  for key, value in overrides.items():
    section, field = key.split(".")
    values[section][field] = value
  return checkpointer, step, config_lib.from_dict(values), train_seq_len


def data_parallel_mesh() -> jax.sharding.Mesh:
  """All of this machine's devices on the batch: any device or process count
  reads the parameters, whatever the mesh at save time."""
  return make_mesh(MeshConfig(ici_data=-1))


def restore_here(checkpointer: Checkpointer, step: int, config, mesh) -> tuple:
  """(setup, params): parameters only (never the optimizer state), on `mesh`."""
  setup = plan_state(config.model, make_optimizer(config.optimizer, config.run.steps), mesh)
  return setup, restore_params(str(checkpointer.directory / str(step)), setup)


def evaluate(workdir: str, step: int | None, eval_batches: int, make_batches,
             overrides: dict | None = None, length_multiple: int = 4) -> dict:
  """Restores parameters only (never the optimizer state) onto this machine's
  devices, data-parallel, and scores `eval_batches` validation batches at the
  configured length, then at `length_multiple` x the training length by
  document position (0 = skip).

  `make_batches(config, n)` yields host batches {"tokens", "segment_pos"}
  and optionally "loss_mask" (only those targets are scored).
  Writes `eval_<step>.json` (and a plot of the loss by position) in the
  workdir and returns the numbers.
  """
  if not isinstance(length_multiple, int) or length_multiple < 0:
    raise ValueError(f"--length_multiple={length_multiple!r} must be an integer >= 0 "
                     "(0 skips the loss by position)")
  checkpointer, step, config, train_seq_len = open_checkpoint(workdir, step, overrides or {})
  mesh = data_parallel_mesh()
  rules.check_batch_divisible(config.data.global_batch_size, mesh)
  # The data (and its tokenizer's vocabulary check) before reading parameters.
  batches = make_batches(config, eval_batches)
  long_batches = None
  if length_multiple:
    long_data = dataclasses.replace(config.data, seq_len=train_seq_len * length_multiple)
    long_batches = make_batches(dataclasses.replace(config, data=long_data), eval_batches)
  setup, params = restore_here(checkpointer, step, config, mesh)
  scorer = Scorer(setup.graphdef, mesh)

  sums, by_source = score_sources(scorer, params, batches, eval_batches, config.data.seq_len)
  result = {"step": step, "seq_len": config.data.seq_len, **summary(*sums)}
  if by_source:
    result["by_source"] = by_source
  logging.info("evaluation of step %d: %s", step, result)
  if long_batches is not None:
    (sum_T, count_T, correct_T), _ = score_sources(scorer, params, long_batches, eval_batches,
                                                   long_data.seq_len)
    result["by_position"] = {"train_seq_len": train_seq_len, "seq_len": long_data.seq_len,
                             **summary(sum_T, count_T, correct_T),
                             "nll_sum": sum_T.tolist(), "count": count_T.tolist(),
                             "correct": correct_T.tolist()}
  if jax.process_index() == 0:
    eval_report.write(workdir, result)
  return result
