"""lm-evaluation-harness on our models: the evaluation of a saved step
(`python -m trainer.lm_eval`), its results file and table, and the
evaluation inside training (`run.lm_eval_every_steps`).

Nothing here imports lm-eval or JAX before an evaluation is asked for: bad
input (task names, flags, the checkpoint's step and tokenizer, task data) is
reported before any parameter is read or anything compiles.
"""

import json
import os
import time
from typing import NamedTuple

from absl import logging
from etils import epath

from common.checks import check_int
from trainer.lm_eval_tasks import (FEWSHOT_SEED, expand_tasks, load_tasks, require_harness,
                                   task_manager, top_level)

def flat_metrics(results: dict) -> dict[str, float]:
  """{"lm_eval/<task>/<metric>": value} for every numeric score of the tasks
  and groups (lm-eval puts both in "results"; a filter other than "none" is
  appended: `exact_match_strip`); standard errors are left out."""
  flat = {}
  for task, scores in results["results"].items():
    for key, value in scores.items():
      metric, _, filter_name = key.partition(",")
      if (not filter_name or metric.endswith("_stderr") or isinstance(value, bool)
          or not isinstance(value, (int, float))):
        continue
      suffix = "" if filter_name == "none" else f"_{filter_name}"
      flat[f"lm_eval/{task}/{metric}{suffix}"] = float(value)
  return flat


def table(results: dict) -> str:
  """task, metric, value, stderr: one line per score."""
  def number(value):
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)
  lines = [f"{'task':<28} {'metric':<24} {'value':>10} {'stderr':>10}"]
  for task, scores in results["results"].items():  # groups included
    for key, value in scores.items():
      metric, _, filter_name = key.partition(",")
      if not filter_name or metric.endswith("_stderr"):
        continue
      stderr = scores.get(f"{metric}_stderr,{filter_name}", "N/A")
      name = metric if filter_name == "none" else f"{metric},{filter_name}"
      lines.append(f"{task:<28} {name:<24} {number(value):>10} {number(stderr):>10}")
  return "\n".join(lines)


def write_results(results: dict, path: str):
  """lm-eval's results JSON (without per-sample logs), written here: lm-eval's
  own writer logs a failed write as a warning and goes on."""
  from lm_eval.utils import handle_non_serializable
  results = {k: v for k, v in results.items() if k != "samples"}
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_text(json.dumps(results, indent=2, default=handle_non_serializable,
                               ensure_ascii=False))


class Checkpoint(NamedTuple):
  """A saved step opened for evaluation: its config and tokenizer, no parameters."""
  checkpointer: object
  step: int
  config: object
  train_seq_len: int
  tokenizer: object


def open_checkpoint(workdir: str, step: int | None = None, tokenizer: str = "") -> Checkpoint:
  """The config of `step` (default the latest) and its tokenizer: the one it
  was trained with, or the SentencePiece model at `tokenizer`."""
  require_harness()
  from pipeline import streams
  from pipeline.tokenizer import check_vocab, load_tokenizer
  from trainer import inference
  from trainer.train_lib import make_tokenizer
  checkpointer, step, config, train_seq_len = inference.open_checkpoint(workdir, step, {})
  if tokenizer:
    text = load_tokenizer(tokenizer, "--tokenizer")
    check_vocab(text, config.model.vocab_size)
  elif (config.data.tokenizer and (config.data.stores or config.data.dataset not in
                                   streams.GENERATED)  # bytes and ids have their own
        and not epath.Path(config.data.tokenizer).exists()):
    raise ValueError(f"step {step} of {workdir} was trained with data.tokenizer="
                     f"{config.data.tokenizer}, which does not exist (any more); give "
                     "--tokenizer=PATH, that SentencePiece model where it is now")
  else:
    text = make_tokenizer(config)
  return Checkpoint(checkpointer, step, config, train_seq_len, text)


def load_lm(checkpoint: Checkpoint | str, *, batch_size: int = 16, max_length: int = 0,
            max_gen_toks: int = 256, seed: int = 0):
  """GriffinLM over the parameters of `checkpoint` (or the latest step of a
  workdir) on all of this machine's devices. `max_length` 0 = the training
  length."""
  from trainer.inference import data_parallel_mesh, restore_here
  from trainer.lm_eval_model import GriffinLM
  if isinstance(checkpoint, str):
    checkpoint = open_checkpoint(checkpoint)
  mesh = data_parallel_mesh()
  plan, params = restore_here(checkpoint.checkpointer, checkpoint.step, checkpoint.config, mesh)
  workdir = str(checkpoint.checkpointer.directory.parent)
  return GriffinLM(plan.graphdef, params, checkpoint.tokenizer, mesh,
                   max_length=max_length or checkpoint.train_seq_len, batch_size=batch_size,
                   max_gen_toks=max_gen_toks, seed=seed,
                   info={"workdir": workdir, "step": checkpoint.step,
                         "train_seq_len": checkpoint.train_seq_len})


def evaluate_checkpoint(workdir: str, step: int | None, tasks: str, *, include_path: str = "",
                        builtin_tasks: bool = True, tokenizer: str = "",
                        num_fewshot: int | None = None, limit: float | None = None,
                        batch_size: int = 16, max_length: int = 0, max_gen_toks: int = 256,
                        bootstrap_iters: int = 1000, output: str = "") -> tuple[dict, str]:
  """Runs lm-eval's `simple_evaluate` on a saved step; process 0 writes the
  results to `output` (default `<workdir>/lm_eval_<step>.json`). Returns
  (results, path). The flags, the step, its tokenizer, the task names and
  the tasks' data are checked, in that order, before parameters are read."""
  for name, value, low in (("--num_fewshot", num_fewshot, 0), ("--batch_size", batch_size, 1),
                           ("--max_length", max_length, 0), ("--max_gen_toks", max_gen_toks, 1),
                           ("--bootstrap_iters", bootstrap_iters, 0)):
    if value is not None:
      check_int(name, value, low)
  if limit is not None and not limit > 0:
    raise ValueError(f"--limit={limit!r} must be > 0: documents per task (a number < 1 is "
                     "a fraction of each task)")
  names = expand_tasks(tasks)
  checkpoint = open_checkpoint(workdir, step, tokenizer)
  manager = task_manager(names, include_path, builtin_tasks)
  loaded = load_tasks(manager, names)
  lm = load_lm(checkpoint, batch_size=batch_size, max_length=max_length,
               max_gen_toks=max_gen_toks)
  from lm_eval import evaluator
  # The perplexity aggregation bootstraps in a process pool forked from this
  # one; forking a process that runs JAX threads can hang.
  os.environ.setdefault("DISABLE_MULTIPROC", "1")
  start = time.perf_counter()
  results = evaluator.simple_evaluate(
      model=lm, tasks=top_level(loaded), task_manager=manager, num_fewshot=num_fewshot,
      limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False,
      fewshot_random_seed=FEWSHOT_SEED,
      batch_size=lm.batch_size)  # recorded in results["config"] only
  seconds = time.perf_counter() - start
  results["total_evaluation_time_seconds"] = str(seconds)  # the field lm-eval's CLI writes
  results["config"]["compiles"] = lm.compiles()
  logging.info("lm-eval took %.1f s (%d compiles)", seconds, lm.compiles())
  path = output or str(epath.Path(workdir) / f"lm_eval_{checkpoint.step}.json")
  import jax
  if jax.process_index() == 0:
    write_results(results, path)
  return results, path


class InTraining:
  """lm-eval every `run.lm_eval_every_steps` steps of a run. Made before the
  first step: lm-eval installed, task names known and their data loaded, or
  the run stops there. Each call returns the flat scores (the loop times it)."""

  def __init__(self, config):
    from pipeline import streams
    run = config.run
    self.names = expand_tasks(run.lm_eval_tasks, "run.lm_eval_tasks")
    manager = task_manager(self.names, run.lm_eval_include_path, run.lm_eval_builtin_tasks,
                           "run.lm_eval_tasks", "run.lm_eval_include_path")
    self.loaded = load_tasks(manager, self.names, "run.lm_eval_tasks")  # read once, now
    for task in self.loaded["tasks"].values():  # what simple_evaluate does
      if task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
      task.set_fewshot_seed(seed=FEWSHOT_SEED)
    # The caller prepared the data, so the tokenizer is there.
    self.tokenizer = streams.make_tokenizer(config.data, config.model.vocab_size)
    self.limit = run.lm_eval_limit or None
    self.max_length, self.batch_size = config.data.seq_len, config.data.global_batch_size
    self.lm = None

  def __call__(self, params, graphdef, mesh) -> dict[str, float]:
    from lm_eval import evaluator
    from trainer.lm_eval_model import GriffinLM
    if self.lm is None:  # kept: its compiled programs serve every evaluation
      self.lm = GriffinLM(graphdef, params, self.tokenizer, mesh, max_length=self.max_length,
                          batch_size=self.batch_size)
    self.lm.params = params
    # Global seeds untouched (simple_evaluate would reseed `random` and NumPy).
    results = evaluator.evaluate(lm=self.lm, task_dict=self.loaded, limit=self.limit,
                                 bootstrap_iters=0, log_samples=False)
    self.lm.params = None  # the next step donates these buffers
    return flat_metrics(results)
