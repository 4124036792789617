"""Induction heads (paper §6.2, Fig. 5b): train at one length, recall at many.

Command, from the repository root (the table in docs/results.md):
  python -m experiments.paper.induction_heads --out=/tmp/paper_induction

Trains Griffin, Hawk and MQA (~250K parameters, configs/paper_induction_heads.py)
with `trainer.train_loop.run_steps` for the config's steps (or, with
--stop_when_solved, until validation accuracy reaches --solved_accuracy),
then scores the last checkpoint with
`trainer.evaluate_lib.evaluate` on validation rows of 1x, 2x, 4x, ... up to
--max_multiple x the training length: accuracy = the argmax at the second
TRIGGER is the token that followed the first, one answer per row. Longer rows
cost more (MQA's attention is quadratic), so rows per length fall as the
length grows (--eval_tokens tokens per length, at least --min_rows rows).
Writes <out>/<family>_s<seed>/, results.json, extrapolation.png and table.md.
"""

import os
import time

from absl import app, flags

from experiments.paper import common
from configs import paper_induction_heads

_RUN = common.define_run_flags(paper_length="256, with --window=128")
_SOLVED = flags.DEFINE_float("solved_accuracy", 0.99, "Validation accuracy that counts "
                             "as solved (the table's 'solved at' step).")
_STOP = flags.DEFINE_bool("stop_when_solved", False, "Stop training at --solved_accuracy "
                          "instead of running the config's steps.")
_MAX_MULTIPLE = flags.DEFINE_integer("max_multiple", 64, "Longest evaluation, in multiples "
                                     "of the training length (powers of two up to it).")
_EVAL_TOKENS = flags.DEFINE_integer("eval_tokens", 32768, "Tokens scored per length.")
_MIN_ROWS = flags.DEFINE_integer("min_rows", 32, "Fewest rows (answers) scored per length.")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch", 32, "Rows per evaluation batch at 1x; "
                                   "halved per doubling of the length, down to 1.")


def multiples() -> list[int]:
  out, m = [], 1
  while m <= _MAX_MULTIPLE.value:
    out.append(m)
    m *= 2
  return out


def extrapolate(workdir: str, train_len: int) -> list[dict]:
  """Accuracy and loss of the answers at each multiple of `train_len`."""
  scores = []
  for m in multiples():
    batch = max(1, _EVAL_BATCH.value // m)
    rows = max(_MIN_ROWS.value, _EVAL_TOKENS.value // (m * train_len))
    rows = -(-rows // batch) * batch
    start = time.time()
    result = common.score(workdir, {"data.seq_len": m * train_len,
                                    "data.global_batch_size": batch}, rows // batch)
    scores.append({"multiple": m, "seq_len": m * train_len, "rows": result["tokens"],
                   "accuracy": result["accuracy"], "loss": result["loss"],
                   "seconds": time.time() - start})
  return scores


def main(argv):
  del argv
  results, start = [], time.time()
  for family, seed, workdir, values, config in _RUN.configs(paper_induction_heads.get_config):
    run = common.train(config, workdir, _SOLVED.value if _STOP.value else 2.0)
    solved = [e["step"] for e in run["evals"] if e["eval_accuracy"] >= _SOLVED.value]
    eval_start = time.time()
    lengths = extrapolate(workdir, config.data.seq_len)
    results.append({"family": family, "seed": seed, "lengths": lengths,
                    "solved_at": solved[0] if solved else None,
                    "eval_s": time.time() - eval_start,
                    "command": common.command("paper_induction_heads", values, workdir),
                    **run})
  train_len = config.data.seq_len
  headers = ["family", "seed", "params", f"solved ({_SOLVED.value:.0%}) at", "steps",
             "val accuracy"] + [
      f"{m}x ({m * train_len})" for m in multiples()] + ["train s", "eval s"]
  rows = [[r["family"], r["seed"], f"{r['params']:,}", r["solved_at"] or "-", r["steps"],
           f"{r['evals'][-1]['eval_accuracy']:.3f}",
           *[f"{s['accuracy']:.3f}" for s in r["lengths"]],
           f"{r['wall_s']:.0f}", f"{r['eval_s']:.0f}"] for r in results]
  common.finish(_RUN.out.value, headers, rows, results, start, notes=(
      "rows (answers) scored per length: " + ", ".join(
          f"{s['multiple']}x {s['rows']}" for s in results[0]["lengths"]),))
  common.plot(os.path.join(_RUN.out.value, "extrapolation.png"),
              [(f"{r['family']} (seed {r['seed']})", [s["seq_len"] for s in r["lengths"]],
                [s["accuracy"] for s in r["lengths"]]) for r in results],
              xlabel="evaluation length (tokens)", ylabel="accuracy of the recall",
              title="Induction heads: length extrapolation", xscale="log",
              vline=(train_len, f"training length {train_len}"),
              hline=(1 / 16, "chance (1/16)"), ylim=(0, 1.05))


if __name__ == "__main__":
  app.run(main)
