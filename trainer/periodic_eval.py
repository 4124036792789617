"""The evaluations a run makes between its steps: the validation loss every
`run.eval_every_steps` and lm-eval every `run.lm_eval_every_steps`."""

import time
from typing import Callable, Iterator

import jax

from trainer import goodput
from trainer.config import Config
from trainer.lm_eval_lib import InTraining
from trainer.metrics import MetricsWriter
from trainer.program import Program
from trainer.progress import Progress
from trainer.scoring import Scorer, score_sources, summary


def evaluation_start(state) -> float:
  """The time an evaluation starts, once the queued training steps are done:
  their time belongs to training, the rest to the evaluation."""
  jax.block_until_ready(state)
  return time.perf_counter()


class PeriodicEvaluation:
  """Called after every step; evaluates when a cadence says so, and logs the
  scores (metrics.jsonl, the progress line, the goodput's evaluation time).

  `eval_data` makes a fresh validation iterator per call; `harness` is
  lm-eval, made before anything compiled (trainer/lm_eval_lib.py)."""

  def __init__(self, config: Config, program: Program,
               eval_data: Callable[[], Iterator] | None, harness: InTraining | None,
               writer: MetricsWriter, progress: Progress, recorder: goodput.Recorder):
    self.run, self.seq_len = config.run, config.data.seq_len
    self.program, self.eval_data, self.harness = program, eval_data, harness
    self.writer, self.progress, self.recorder = writer, progress, recorder
    self.scorer = (Scorer(program.setup.graphdef, program.mesh)
                   if eval_data and self.run.eval_every_steps else None)

  def __call__(self, step: int, state):
    if self.scorer and step % self.run.eval_every_steps == 0:
      self._validation(step, state)
    if self.harness and step % self.run.lm_eval_every_steps == 0:
      start = evaluation_start(state)
      scores = self.harness(state.params, self.program.setup.graphdef, self.program.mesh)
      seconds = time.perf_counter() - start
      self.progress.event(f"lm-eval at step {step}: " + ", ".join(
          f"{k.removeprefix('lm_eval/')} {v:.4f}" for k, v in scores.items())
          + f" ({seconds:.1f} s)")
      self.writer.write_eval(step, {**scores, "lm_eval_seconds": seconds}, seconds)
      self.recorder.add("evaluation", seconds)

  def _validation(self, step: int, state):
    start = evaluation_start(state)
    sums, by_source = score_sources(self.scorer, state.params, self.eval_data(),
                                    self.run.eval_steps, self.seq_len)
    result = summary(*sums)
    seconds = time.perf_counter() - start
    stderr = f" ± {result['loss_stderr']:.4f}" if "loss_stderr" in result else ""
    self.progress.event(f"eval at step {step}: loss {result['loss']:.4f}{stderr}, perplexity "
                        f"{result['perplexity']:.2f}, accuracy {result['accuracy']:.4f} "
                        f"({seconds:.1f} s)")
    self.writer.write_eval(step, {"eval_loss": result["loss"],
                                  "eval_perplexity": result["perplexity"],
                                  "eval_accuracy": result["accuracy"],
                                  **({"eval_loss_stderr": result["loss_stderr"]}
                                     if "loss_stderr" in result else {}),
                                  **{f"eval_loss_{name}": source["loss"]
                                     for name, source in by_source.items()},
                                  "eval_seconds": seconds}, seconds)
    self.recorder.add("evaluation", seconds)
