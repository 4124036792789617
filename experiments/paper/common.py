"""What the paper experiments share: their flags, configs with per-family
overrides, a training run through the real loop with its validation curve,
and the table.

Every experiment trains with `trainer.train_loop.run_steps` and scores with
`trainer.evaluate_lib.evaluate`, exactly what `python -m trainer.train` and
`python -m trainer.evaluate` run.
"""

import json
import os
import time
from typing import NamedTuple

from absl import flags
from etils import epath

from model.presets import param_count
from trainer import config as config_lib
from trainer.config import Config
from trainer.evaluate_lib import evaluate
from trainer.train_lib import make_eval_iterator, make_train_iterator
from trainer.preemption import StopFlag
from trainer.train_loop import run_steps

# The three families of the paper at the same width and depth: Griffin keeps
# the config's pattern and local window; Hawk has recurrent blocks only; MQA
# global attention only (RoPE, no local window).
FAMILY_OVERRIDES = {
    "griffin": {},
    "hawk": {"model.block_pattern": "R"},
    "mqa": {"model.block_pattern": "A", "model.attention_window": None},
}


class RunFlags(NamedTuple):
  """The flags every paper experiment takes; seq_len and window are None
  where an experiment keeps the config's."""
  out: flags.FlagHolder
  families: flags.FlagHolder
  seeds: flags.FlagHolder
  steps: flags.FlagHolder
  seq_len: flags.FlagHolder | None
  window: flags.FlagHolder | None

  def configs(self, get_config):
    """(family, seed, workdir, overrides, Config) of every run the flags ask
    for: `runs`, each with its `run_overrides` applied to a config file's
    `get_config()`."""
    for family, seed, workdir in runs(self.out.value, self.families.value, self.seeds.value):
      values = run_overrides(family, seed, self.steps.value,
                             self.seq_len.value if self.seq_len is not None else 0,
                             self.window.value if self.window is not None else 0)
      yield family, seed, workdir, values, build(get_config, values)


def define_run_flags(paper_length: str = "") -> RunFlags:
  """--out, --families, --seeds and --steps; with `paper_length` (the paper's
  training length and window, for the help) --seq_len and --window too."""
  lengths = (flags.DEFINE_integer("seq_len", 0, "Training length; 0 = the config's (the "
                                  f"paper: {paper_length})."),
             flags.DEFINE_integer("window", 0, "Griffin's local window; 0 = the config's."),
             ) if paper_length else (None, None)
  return RunFlags(
      flags.DEFINE_string("out", None, "Directory for the runs, JSON, plot and table.",
                          required=True),
      flags.DEFINE_list("families", list(FAMILY_OVERRIDES), "griffin, hawk, mqa."),
      flags.DEFINE_list("seeds", ["0"], "Seeds (initialisation and training rows), one run "
                        "each."),
      flags.DEFINE_integer("steps", 0, "Training steps per run (also the schedule; a run "
                           "that stops once solved takes fewer); 0 = the config's."),
      *lengths)


def runs(out: str, families: list[str], seeds: list[str]):
  """(family, seed, workdir) of every run, seed by seed; creates `out`."""
  unknown = [f for f in families if f not in FAMILY_OVERRIDES]
  if unknown:
    raise ValueError(f"--families has unknown {unknown}; valid: {list(FAMILY_OVERRIDES)}")
  os.makedirs(out, exist_ok=True)
  for seed in [int(s) for s in seeds]:
    for family in families:
      yield family, seed, os.path.join(out, f"{family}_s{seed}")


def run_overrides(family: str, seed: int, steps: int = 0, seq_len: int = 0,
                  window: int = 0) -> dict:
  """One run's overrides: its seed (initialisation and data), and the steps,
  length and Griffin window when given (0 = the config's), then the family."""
  values = {"run.seed": seed, "data.shuffle_seed": seed}
  if steps:
    values.update({"run.steps": steps, "checkpoint.save_every_steps": steps})
  if seq_len:
    values["data.seq_len"] = seq_len
  if window:
    values["model.attention_window"] = window
  return {**values, **FAMILY_OVERRIDES[family]}


def build(get_config, overrides: dict) -> Config:
  """`get_config()` of a config file with {"section.field": value} applied,
  as `--config.section.field=value` would."""
  return config_lib.build(config_lib.with_overrides(get_config(), overrides))


def command(config_file: str, overrides: dict, workdir: str) -> str:
  """The `trainer.train` command line of one run."""
  flags = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
  return (f"python -m trainer.train --config=configs/{config_file}.py "
          f"--workdir={workdir} {flags}").strip()


class StopWhenSolved(StopFlag):
  """Stops the loop (it saves and returns) at the first validation record
  whose accuracy reaches `threshold`: steps after solving cost CPU and say
  nothing about how fast a family learns."""

  def __init__(self, workdir: str, threshold: float):
    super().__init__()
    self.metrics = epath.Path(workdir) / "metrics.jsonl"
    self.threshold, self.seen = threshold, 0

  def __bool__(self):
    if self.threshold <= 1 and self.metrics.exists():
      records = self.metrics.read_text().splitlines()
      for line in records[self.seen:]:
        if json.loads(line).get("eval_accuracy", -1.0) >= self.threshold:
          self.event.set()
      self.seen = len(records)
    return self.event.is_set()


def train(config: Config, workdir: str, solved_accuracy: float = 2.0) -> dict:
  """Trains `config` from scratch in `workdir` with validation every
  `run.eval_every_steps`; stops early once validation accuracy reaches
  `solved_accuracy` (> 1: never). Returns the run's numbers."""
  if epath.Path(workdir).exists() and any(epath.Path(workdir).iterdir()):
    raise ValueError(f"{workdir} is not empty; the experiments start from scratch "
                     "(remove it or pick another --out)")
  start = time.time()
  history = run_steps(config, workdir, make_train_iterator(config),
                      stop=StopWhenSolved(workdir, solved_accuracy),
                      eval_data=lambda: make_eval_iterator(config, config.run.eval_steps))
  wall_s = time.time() - start
  records = [json.loads(line) for line in
             (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  evals = [{k: r[k] for k in ("step", "eval_loss", "eval_accuracy")}
           for r in records if "eval_accuracy" in r]
  last = history[-1]["step"]
  if not evals or evals[-1]["step"] != last:  # the final state is always scored
    result = score(workdir, {}, config.run.eval_steps)
    evals.append({"step": last, "eval_loss": result["loss"],
                  "eval_accuracy": result["accuracy"]})
  # Median seconds per step from the logged throughput (compile excluded).
  rates = sorted(r["tokens_per_s_per_device"] for r in records
                 if "tokens_per_s_per_device" in r)
  tokens = config.data.global_batch_size * config.data.seq_len
  step_s = tokens / rates[len(rates) // 2] if rates else float("nan")
  return {"params": param_count(config.model), "steps": last,
          "final_loss": history[-1]["loss"], "evals": evals, "wall_s": wall_s,
          "step_s": step_s}


def score(workdir: str, overrides: dict, eval_batches: int, length_multiple: int = 0) -> dict:
  """`trainer.evaluate_lib.evaluate` of the latest checkpoint in `workdir`."""
  return evaluate(workdir, None, eval_batches, make_eval_iterator, overrides, length_multiple)


def markdown_table(headers: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def finish(out: str, headers: list[str], rows: list[list], results: list[dict], start: float,
           notes: tuple[str, ...] = ()):
  """Prints the table (and notes) and writes <out>/table.md and results.json."""
  table = markdown_table(headers, rows)
  text = "\n".join([table, *notes, f"total {time.time() - start:.0f} s"])
  print(text)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)


def plot(path: str, series: list[tuple], *, xlabel: str, ylabel: str, title: str,
         xscale: str = "linear", vline: tuple | None = None, hline: tuple | None = None,
         ylim: tuple | None = None, points: list[tuple] = ()):
  """A PNG of (label, xs, ys) lines, with an optional (x, label) vertical and
  (y, label) horizontal reference line, and (x, y, label) points marked."""
  import matplotlib
  matplotlib.use("Agg")  # no display; must precede pyplot
  from matplotlib import pyplot as plt
  figure, axes = plt.subplots(figsize=(6, 4))
  for label, xs, ys in series:
    axes.plot(xs, ys, marker="o", markersize=3, label=label)
  for x, y, label in points:
    axes.plot([x], [y], marker="*", markersize=12, color="black", linestyle="none",
              label=label)
  if vline:
    axes.axvline(vline[0], color="gray", linestyle="--", label=vline[1])
  if hline:
    axes.axhline(hline[0], color="gray", linestyle=":", label=hline[1])
  axes.set(xscale=xscale, xlabel=xlabel, ylabel=ylabel, title=title)
  if ylim:
    axes.set_ylim(*ylim)
  axes.legend()
  axes.grid(alpha=0.3)
  figure.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(figure)
