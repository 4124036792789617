"""Downstream tasks on a checkpoint with lm-evaluation-harness.

    python -m trainer.lm_eval --workdir=DIR_OR_GS_PATH [--step=N] \\
        --tasks=hellaswag,piqa|paper_table1|linear_rnn_zero_shot \\
        [--include_path=DIR] [--nobuiltin_tasks] [--tokenizer=PATH] [--num_fewshot=N] \\
        [--limit=N] [--batch_size=16] [--max_length=N] [--output=PATH]

Parameters only are read, onto whatever devices this machine has. Writes
lm-eval's results JSON to <workdir>/lm_eval_<step>.json (or --output) and
prints task, metric, value and stderr. Run it as a module: `python
trainer/lm_eval.py` would put trainer/ first on the path, where this file
hides the `lm_eval` package. Needs `pip install -e '.[lm_eval]'`.
"""

from absl import flags

from common import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_TASKS = flags.DEFINE_string(
    "tasks", None, "Comma-separated lm-eval tasks, groups or tags, or a suite: paper_table1, "
    "linear_rnn_zero_shot.", required=True)
_INCLUDE_PATH = flags.DEFINE_string("include_path", "", "A folder of local task YAMLs.")
_BUILTIN_TASKS = flags.DEFINE_bool(
    "builtin_tasks", True, "Also index lm-eval's own tasks (about 10 s); --nobuiltin_tasks: "
    "only those under --include_path.")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", "", "The SentencePiece model the run was trained with, if it has moved; "
    "default the one its config names.")
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "Few-shot examples; default each "
                                    "task's own (0 for the suites' tasks).")
_LIMIT = flags.DEFINE_float("limit", None, "Documents per task (< 1: a fraction); for "
                            "quick checks, not for reported numbers.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Rows per batch (rounded up to a "
                                   "multiple of the device count).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 0, "Longest input in tokens; 0 = the "
                                   "training length (longer works: no position limit).")
_MAX_GEN_TOKS = flags.DEFINE_integer("max_gen_toks", 256, "Generation limit of tasks that "
                                     "set none.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap_iters", 1000, "Resamples for the stderr of "
                                  "non-mean metrics (perplexity); 0 = none.")
_OUTPUT = flags.DEFINE_string("output", "", "Results JSON; default <workdir>/lm_eval_<step>.json.")


def main():
  from trainer.lm_eval_lib import evaluate_checkpoint, table  # after flag parsing: slow imports
  limit = _LIMIT.value
  results, path = evaluate_checkpoint(
      _WORKDIR.value, _STEP.value, _TASKS.value, include_path=_INCLUDE_PATH.value,
      builtin_tasks=_BUILTIN_TASKS.value, tokenizer=_TOKENIZER.value,
      num_fewshot=_NUM_FEWSHOT.value,
      limit=int(limit) if limit is not None and limit >= 1 else limit,
      batch_size=_BATCH_SIZE.value, max_length=_MAX_LENGTH.value,
      max_gen_toks=_MAX_GEN_TOKS.value, bootstrap_iters=_BOOTSTRAP.value, output=_OUTPUT.value)
  print(table(results))
  seconds = float(results["total_evaluation_time_seconds"])
  print(f"step {results['config']['step']}: {seconds:.1f} s, {results['config']['compiles']} "
        f"compiles; results in {path}")


if __name__ == "__main__":
  cli.run(main)
