"""Selective copying (paper §6.2, Fig. 5a): steps each family needs to solve it.

Command, from the repository root (the table in docs/results.md):
  python -m experiments.paper.selective_copying --out=/tmp/paper_copy

Trains Griffin, Hawk and MQA (~250K parameters, configs/paper_selective_copying.py)
with `trainer.train_loop.run_steps`, scoring the validation rows every
`run.eval_every_steps` (accuracy = the argmax is the answer, over the 16
copied tokens of each row). A run stops once validation accuracy reaches
--solved_accuracy; "steps to solve" is that step (a multiple of the
validation interval), and the first steps past 50% and 90% are reported too. Writes <out>/<family>_s<seed>/
(checkpoints, metrics.jsonl), results.json, curves.png and table.md.
"""

import os
import time

from absl import app, flags

from experiments.paper import common
from configs import paper_selective_copying

_RUN = common.define_run_flags(paper_length="1024, with --window=512")
_SOLVED = flags.DEFINE_float("solved_accuracy", 0.95, "Validation accuracy that counts "
                             "as solved; the run stops there (> 1: never stop early).")
THRESHOLDS = (0.5, 0.9)  # also reported: the first step past each


def first_step(evals: list[dict], threshold: float):
  steps = [e["step"] for e in evals if e["eval_accuracy"] >= threshold]
  return steps[0] if steps else None


def main(argv):
  del argv
  results, start = [], time.time()
  thresholds = (*THRESHOLDS, _SOLVED.value)
  for family, seed, workdir, values, config in _RUN.configs(paper_selective_copying.get_config):
    run = common.train(config, workdir, _SOLVED.value)
    results.append({"family": family, "seed": seed, "seq_len": config.data.seq_len,
                    "max_steps": config.run.steps,
                    **{f"step_to_{t}": first_step(run["evals"], t) for t in thresholds},
                    "command": common.command("paper_selective_copying", values, workdir),
                    **run})
  rows = [[r["family"], r["seed"], f"{r['params']:,}",
           *[r[f"step_to_{t}"] or f"> {r['max_steps']}" for t in thresholds],
           f"{r['evals'][-1]['eval_accuracy']:.3f} @ {r['evals'][-1]['step']}",
           f"{r['step_s']:.3f}", f"{r['wall_s']:.0f}"] for r in results]
  headers = ["family", "seed", "params", *[f"steps to {t:.0%}" for t in thresholds],
             "last accuracy @ step", "s/step", "wall s"]
  common.finish(_RUN.out.value, headers, rows, results, start)
  common.plot(os.path.join(_RUN.out.value, "curves.png"),
              [(f"{r['family']} (seed {r['seed']})", [e["step"] for e in r["evals"]],
                [e["eval_accuracy"] for e in r["evals"]]) for r in results],
              xlabel="training step", ylabel="validation accuracy (copied tokens)",
              title=f"Selective copying, length {results[0]['seq_len']}, 16 data tokens",
              hline=(1 / 16, "chance (1/16)"), ylim=(0, 1.02))


if __name__ == "__main__":
  app.run(main)
