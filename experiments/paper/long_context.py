"""Loss by position beyond the training length (paper §6.1, Fig. 5) on the
default corpus: Griffin, Hawk and MQA at matched parameters and steps.

Command, from the repository root (the table in docs/results.md):
  python -m experiments.paper.long_context --out=/tmp/paper_long_context

Trains each family with `trainer.train_loop.run_steps` on configs/paper_long_context.py
(byte-level rows of the interpreter's standard library), then
`trainer.evaluate_lib.evaluate(..., length_multiple=4)` scores validation rows of
4x the training length by document position. The paper: the recurrent models
keep improving past the training length, MQA with RoPE does not. Writes
<out>/<family>_s<seed>/ (with evaluate's eval_<step>.json and plot),
results.json, loss_by_position.png and table.md.
"""

import os
import time

import numpy as np
from absl import app, flags

from experiments.paper import common
from configs import paper_long_context
from trainer.eval_report import binned

_RUN = common.define_run_flags()
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 16, "Validation batches per length.")
_MULTIPLE = flags.DEFINE_integer("length_multiple", 4, "Loss by position up to this "
                                 "multiple of the training length.")


def position_bins(train_len: int, multiple: int) -> list[tuple[int, int]]:
  """[lo, hi) position ranges: the first tokens, the rest of the training
  length, then each further training length."""
  edges = [1, 32, train_len // 2, train_len] + [train_len * m for m in range(2, multiple + 1)]
  return list(zip(edges[:-1], edges[1:]))


def bin_means(by_position: dict, bins) -> list[float]:
  nll_T, count_T = np.asarray(by_position["nll_sum"]), np.asarray(by_position["count"])
  return [float(nll_T[lo:hi].sum() / max(count_T[lo:hi].sum(), 1)) for lo, hi in bins]


def main(argv):
  del argv
  results, start = [], time.time()
  for family, seed, workdir, values, config in _RUN.configs(paper_long_context.get_config):
    run = common.train(config, workdir)
    eval_start = time.time()
    result = common.score(workdir, {}, _EVAL_BATCHES.value, _MULTIPLE.value)
    results.append({"family": family, "seed": seed, "loss": result["loss"],
                    "by_position": result["by_position"], "eval_s": time.time() - eval_start,
                    "command": common.command("paper_long_context", values, workdir), **run})
  train_len = config.data.seq_len
  bins = position_bins(train_len, _MULTIPLE.value)
  headers = ["family", "seed", "params", "steps", f"val loss @{train_len}"] + [
      f"pos {lo}-{hi - 1}" for lo, hi in bins] + ["train s", "eval s"]
  rows = [[r["family"], r["seed"], f"{r['params']:,}", r["steps"], f"{r['loss']:.3f}",
           *[f"{m:.3f}" for m in bin_means(r["by_position"], bins)],
           f"{r['wall_s']:.0f}", f"{r['eval_s']:.0f}"] for r in results]
  common.finish(_RUN.out.value, headers, rows, results, start, notes=(
      "mean next-byte NLL (nats) over the positions of each column; rows of "
      f"{train_len * _MULTIPLE.value} bytes",))
  series = []
  for r in results:
    edges, means = binned(r["by_position"]["nll_sum"], r["by_position"]["count"], 24)
    centers = np.sqrt(edges[:-1] * np.maximum(edges[1:] - 1, edges[:-1]))
    series.append((f"{r['family']} (seed {r['seed']})", centers, means))
  common.plot(os.path.join(_RUN.out.value, "loss_by_position.png"), series,
              xlabel="token position in row", ylabel="mean next-byte NLL (nats)",
              title="Loss by position, stdlib bytes", xscale="log",
              vline=(train_len, f"training length {train_len}"))


if __name__ == "__main__":
  app.run(main)
