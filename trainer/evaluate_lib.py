"""Evaluation of a saved checkpoint: validation loss, perplexity and
next-token accuracy, and the loss by document position at lengths beyond
training (the paper's Fig. 5)."""

import dataclasses

import jax
from absl import logging

from sharding import rules
from trainer import eval_report
from trainer.inference import data_parallel_mesh, open_checkpoint, restore_here
from trainer.scoring import Scorer, score_sources, summary


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
  rules.check_batch_divisible(config.data.global_batch_size, mesh.shape)
  # The data (and its tokenizer's vocabulary check) before reading parameters.
  batches = make_batches(config, eval_batches)
  long_batches = None
  if length_multiple:
    long_data = dataclasses.replace(config.data, seq_len=train_seq_len * length_multiple)
    long_batches = make_batches(dataclasses.replace(config, data=long_data), eval_batches)
  plan, params = restore_here(checkpointer, step, config, mesh)
  scorer = Scorer(plan.graphdef, mesh)

  sums, by_source = score_sources(scorer, params, batches, eval_batches, config.data.seq_len)
  result = {"step": step, "seq_len": config.data.seq_len, **summary(*sums)}
  if by_source:
    result["by_source"] = by_source
  logging.info("evaluation of step %d: %s", step, result)
  if long_batches is not None:
    (sum_T, count_T, correct_T, batch_B2), _ = score_sources(
        scorer, params, long_batches, eval_batches, long_data.seq_len)
    result["by_position"] = {"train_seq_len": train_seq_len, "seq_len": long_data.seq_len,
                             **summary(sum_T, count_T, correct_T, batch_B2),
                             "nll_sum": sum_T.tolist(), "count": count_T.tolist(),
                             "correct": correct_T.tolist()}
  if jax.process_index() == 0:
    eval_report.write(workdir, result)
  return result
