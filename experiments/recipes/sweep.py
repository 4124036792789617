"""The peak learning rate of Griffin by width, the power law that predicts
it for 1B, 7B and 14B (paper §3.1: tuned on small models, fitted scaling
rules for the large ones), and the paper's Fig. 1a at CPU scale.

Command, from the repository root (docs/recipes.md holds its output):
  python -m experiments.recipes.sweep --out=/tmp/lr_sweep [--shard=0/2 and 1/2]

1. Each width trains Griffin ((R, R, A) blocks, `--depth` fixed, local window
   32) on byte-level rows of the embedded stdlib corpus for
   `--tokens_per_param` tokens per non-embedding parameter (a
   Chinchilla-proportional budget), with warmup then cosine decay, at every
   learning rate of `--lrs` (the first seed).
2. At each width the grid point nearest its best (a parabola in log lr, fit.py)
   trains on the other `--seeds`.
3. Hawk and MQA (the same widths and depth, their own blocks) train at that
   rate on every seed, on their own budgets: the paper gives the three
   families the same hyper-parameters. Loss against training FLOPs is Fig. 1a.

Every run is `trainer.train_loop.run_steps`, scored by
`trainer.evaluate_lib.evaluate` (16 batches of held-out rows). Runs are
independent and resumable: with `--shard=i/n` a process trains every n-th run
of each phase and waits for the others' (start n of them, one per core; shard
0 writes the tables); a run whose result.json exists is not trained again.
Writes <out>/<run>/, results.json, fit.json, table.md, lr_sweep.png and
scaling.png (report.py).
"""

import json
import math
import os
import time

from absl import flags

from common import cli
from configs import griffin_tiny
from experiments.paper import common
from experiments.recipes import fit, report
from model.flops import train_flops
from model.presets import param_count_by_kind

_OUT = flags.DEFINE_string("out", None, "Directory for the runs and the table.",
                           required=True)
_WIDTHS = flags.DEFINE_list("widths", ["32", "64", "128"], "Model widths (>= 3).")
_DEPTH = flags.DEFINE_integer("depth", 3, "Blocks at every width (one (R, R, A) group).")
_LRS = flags.DEFINE_list("lrs", ["2e-3", "4e-3", "8e-3", "1.6e-2", "3.2e-2", "6.4e-2"],
                         "Peak learning rates of the grid (>= 5).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds; the first at every grid point, the "
                           "others at each width's best grid point.")
_TOKENS_PER_PARAM = flags.DEFINE_float("tokens_per_param", 4.0, "Training tokens per "
                                       "non-embedding parameter.")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows per step.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Bytes per row.")
_SHARD = flags.DEFINE_string("shard", "", "i/n: train only every n-th run from the i-th.")
FAMILIES = ("griffin", "hawk", "mqa")


def non_embedding_params(config) -> int:
  counts = param_count_by_kind(config.model)
  return sum(n for kind, n in counts.items() if kind != "embedding")


def run_config(family: str, width: int, lr: float, seed: int):
  """(overrides, Config) of one run: the family's model at `width`, its budget."""
  values = {"model.width": width, "model.lru_width": width, "model.head_dim": 32,
            "model.depth": _DEPTH.value, "model.gate_blocks": 4,
            "data.seq_len": _SEQ_LEN.value, "data.global_batch_size": _BATCH.value,
            "optimizer.learning_rate": lr, "run.seed": seed, "data.shuffle_seed": seed,
            **common.FAMILY_OVERRIDES[family]}
  params = non_embedding_params(common.build(griffin_tiny.get_config, values))
  steps = max(20, round(_TOKENS_PER_PARAM.value * params / (_BATCH.value * _SEQ_LEN.value)))
  values.update({"run.steps": steps, "optimizer.warmup_steps": max(2, steps // 20),
                 "run.log_every_steps": max(1, steps // 10),
                 "checkpoint.save_every_steps": steps, "run.eval_every_steps": 0})
  return values, common.build(griffin_tiny.get_config, values)


def result_path(family: str, width: int, lr: float, seed: int) -> str:
  name = f"w{width}_lr{lr:g}_s{seed}"
  return os.path.join(_OUT.value, name if family == "griffin" else f"{family}_{name}",
                      "result.json")


def train_once(family: str, width: int, lr: float, seed: int) -> dict:
  """One run's result, read from <workdir>/result.json when it was trained before."""
  path = result_path(family, width, lr, seed)
  if os.path.exists(path):
    with open(path) as f:
      return {"family": family, **json.load(f)}
  values, config = run_config(family, width, lr, seed)
  workdir = os.path.dirname(path)
  run = common.train(config, workdir)
  result = {"family": family, "width": width, "lr": lr, "seed": seed,
            "loss": run["evals"][-1]["eval_loss"],
            "non_embedding_params": non_embedding_params(config),
            "tokens": run["steps"] * _BATCH.value * _SEQ_LEN.value,
            "train_flops": run["steps"] * train_flops(config.model, _BATCH.value,
                                                      _SEQ_LEN.value),
            "command": common.command("griffin_tiny", values, workdir),
            **{k: run[k] for k in ("params", "steps", "final_loss", "wall_s", "step_s")}}
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  return result


def mine(index: int) -> bool:
  if not _SHARD.value:
    return True
  i, n = (int(p) for p in _SHARD.value.split("/"))
  return index % n == i


def check_flags():
  widths, lrs = [int(w) for w in _WIDTHS.value], [float(v) for v in _LRS.value]
  if len(set(widths)) < 3 or any(w % 32 for w in widths):
    raise ValueError(f"--widths={','.join(_WIDTHS.value)}: give >= 3 different widths, "
                     "each a multiple of 32 (head_dim 32)")
  if len(set(lrs)) < 5 or min(lrs) <= 0:
    raise ValueError(f"--lrs={','.join(_LRS.value)}: give >= 5 different positive rates")
  if not _SEEDS.value or not all(s.isdigit() for s in _SEEDS.value):
    raise ValueError(f"--seeds={','.join(_SEEDS.value)}: give seeds >= 0, e.g. 0,1")
  if _SHARD.value and not (len(p := _SHARD.value.split("/")) == 2
                           and all(v.isdigit() for v in p) and int(p[0]) < int(p[1])):
    raise ValueError(f"--shard={_SHARD.value}: give i/n with 0 <= i < n, e.g. 0/2")
  return widths, sorted(lrs), [int(s) for s in _SEEDS.value]


def train_share(runs: list[tuple]) -> list[dict]:
  """Trains this shard's share of `runs`, waits for the other shards' (their
  result.json files), and returns every run's result."""
  for index, run in enumerate(runs):
    if mine(index):
      train_once(*run)
  while missing := [run for run in runs if not os.path.exists(result_path(*run))]:
    print(f"waiting for {len(missing)} runs of the other shards, e.g. {missing[0]}",
          flush=True)
    time.sleep(30)
  return [train_once(*run) for run in runs]


def main():
  widths, lrs, seeds = check_flags()
  start = time.time()
  os.makedirs(_OUT.value, exist_ok=True)
  grid = train_share([("griffin", w, lr, seeds[0]) for w in widths for lr in lrs])
  grid = {(r["width"], r["lr"]): r for r in grid}
  best = {w: fit.best_learning_rate(lrs, [grid[w, lr]["loss"] for lr in lrs]) for w in widths}
  at_best = {w: min(lrs, key=lambda lr: abs(math.log(lr / best[w]))) for w in widths}
  families = train_share([(f, w, at_best[w], s) for f in FAMILIES for w in widths
                          for s in seeds if (f, s) != ("griffin", seeds[0])])
  if not _SHARD.value or _SHARD.value.startswith("0/"):
    report.write(_OUT.value, widths, lrs, seeds, grid, best, at_best,
                 [grid[w, at_best[w]] for w in widths] + families, time.time() - start)


if __name__ == "__main__":
  cli.run(main)
