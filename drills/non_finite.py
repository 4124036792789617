"""Non-finite numbers: NaN and Inf halt a run, or are skipped and counted.

Faults come in only through what a run reads, as in production:
- NaN: the data iterator yields a batch of token ids past the vocabulary
  (their embeddings and target log-probabilities are NaN).
- Inf: a checkpoint the run resumes from, written with the public
  `Checkpointer`, holds a state whose gradient norm overflows float32
  (`overflowing`): one MLP unit of the first block gets output weights of 0
  and up-projection (not gate) weights 1e25 times larger. The loss stays
  finite (the unit's ~1e25-sized activation is multiplied by 0), but the
  gradient of its output weights is that activation times the loss gradient,
  and its square is +Inf: every step from that state reports grad_norm = inf
  with a finite loss, as overflowing activations do.

No data gives an Inf loss or gradient norm for a finite state: the final
RMSNorm bounds the logits by the parameters (and with z_loss = 0 an
overflowing log-partition makes the loss NaN, not Inf, through 0 * inf). A
state cannot make one step Inf and the next finite either, because a skipped
step keeps it. So the skip-and-resume trial injects NaN only; the Inf state
shows halting, and the skip limit that stops a run whose every step is bad.
"""

import re
import time

from etils import epath

from drills.harness import Drill, OVERRIDES, committed, records

SCALE = 1e25  # the rigged unit's up-projection weights grow by this; its output weights are 0


def overflowing(params):
  """`params` with unit 0 of the first block's MLP rigged as the module
  docstring says: a finite loss, an Inf gradient norm."""
  import jax

  def rig(path, value):
    names = [str(getattr(key, "key", getattr(key, "idx", key))) for key in path]
    if names[:4] != ["groups", "blocks", "0", "mlp"]:
      return value
    if names[4:6] == ["down", "kernel"]:  # (layers, F, D): unit 0's output weights
      return value.at[0, 0, :].set(0.0)
    if names[4] == "up":  # (layers, D, 2, F): unit 0's up (not GeLU-gate) weights
      return value.at[0, :, 1, 0].multiply(SCALE)
    return value

  return jax.tree_util.tree_map_with_path(rig, params)


def rig_checkpoint(config, workdir: str, step: int, data_iterator):
  """Replaces checkpoint `step` of `workdir` by the same state, data position
  and counters with `overflowing` parameters, through `Checkpointer`."""
  from trainer.checkpoint import Checkpointer
  from trainer.program import build_program

  program = build_program(config)
  checkpointer = Checkpointer(workdir, config.checkpoint)
  state, config_json, counters = checkpointer.restore(step, program.setup, data_iterator)
  checkpointer.manager.delete(step)
  checkpointer.save(step, state._replace(params=overflowing(state.params)), data_iterator,
                    config_json, counters)
  checkpointer.close()


def nan_drill(d: Drill):
  import numpy as np
  from trainer import config as config_lib
  from trainer.train_lib import make_train_iterator
  from trainer.preemption import StopFlag
  from trainer.train_loop import NonFiniteLossError, run_steps

  started = time.monotonic()

  def config(**overrides):
    return config_lib.build(config_lib.with_overrides(config_lib.defaults(), {
        **OVERRIDES, "data.dataset": "stdlib_bytes", "model.vocab_size": 256,
        "model.block_pattern": "RRA", "run.steps": 12, "checkpoint.save_every_steps": 2,
        "checkpoint.max_to_keep": 20, **overrides}))

  class Faulty:
    """The train iterator with NaN batches (token ids past the vocabulary)
    at the given steps."""

    def __init__(self, cfg, nan_steps=(), first_step=1):
      self.iterator, self.step, self.nan_steps = make_train_iterator(cfg), first_step, nan_steps

    def __iter__(self):
      return self

    def __next__(self):
      batch = next(self.iterator)
      if self.step in self.nan_steps:
        batch["tokens"] = np.full_like(batch["tokens"], 256)
      self.step += 1
      return batch

    def get_state(self):
      return self.iterator.get_state()

    def set_state(self, state):
      self.iterator.set_state(state)

    def start_prefetch(self):
      pass

  def rigged_run(name: str, **overrides) -> str:
    """6 clean steps (checkpoints 2, 4, 6), then checkpoint 6 rigged to overflow."""
    workdir = d.path(name)
    run_steps(config(**{"run.steps": 6}), workdir, Faulty(config()))
    rig_checkpoint(config(**overrides), workdir, 6, Faulty(config()))
    return workdir

  results = []
  for kind in ("NaN", "Inf"):
    if kind == "NaN":
      workdir = d.path("nan_halt_NaN")
      data = Faulty(config(), nan_steps=(7,))
    else:
      workdir, data = rigged_run("nan_halt_Inf"), Faulty(config(), first_step=7)
    try:
      run_steps(config(), workdir, data)
      results.append((f"halt on {kind}", False, "did not halt"))
    except NonFiniteLossError as e:
      kept = committed(workdir)
      seen = f"'grad_norm': {kind.lower()}" in str(e)  # the fault it was meant to be
      results.append((f"halt on {kind} at step 7", kept == [2, 4, 6] and seen,
                      f"NonFiniteLossError '{str(e)}'; committed {kept}"))
  # Skip: NaN at 3, 5 and 9; straight, and stopped after step 6 then resumed.
  faults = {"nan_steps": (3, 5, 9)}
  skip = {"run.on_non_finite": "skip"}
  straight = run_steps(config(**skip), d.path("nan_skip_straight"), Faulty(config(), **faults))
  workdir = d.path("nan_skip_resumed")

  class StopAfter6(StopFlag):
    def __bool__(self):
      return bool(records_of(workdir)) and max(records_of(workdir)) >= 6

  def records_of(w):
    return records(w) if (epath.Path(w) / "metrics.jsonl").exists() else {}

  first = run_steps(config(**skip), workdir, Faulty(config(), **faults), stop=StopAfter6())
  second = run_steps(config(**skip), workdir,
                     Faulty(config(), **faults, first_step=first[-1]["step"] + 1))
  keys = ("loss", "grad_norm", "skipped", "skipped_steps")
  exact = [[h.get(k) for k in keys] for h in first + second]
  want = [[h.get(k) for k in keys] for h in straight]
  same = np.array_equal(np.array(exact, float), np.array(want, float), equal_nan=True)
  results.append(("skip: NaN at 3, 5 and 9; stopped at 6 and resumed",
                  same and straight[-1]["skipped_steps"] == 3,
                  f"skipped_steps {straight[-1]['skipped_steps']:.0f}, curve of the resumed "
                  f"run {'equal bit for bit' if same else 'DIFFERS'} to the straight one"))
  limited = {**skip, "run.max_skipped_steps": 2}
  workdir = rigged_run("nan_skip_limit", **limited)
  try:
    run_steps(config(**limited), workdir, Faulty(config(), first_step=7))
    results.append(("skip with run.max_skipped_steps=2", False, "did not halt"))
  except NonFiniteLossError as e:
    message = re.sub(r"metrics \{[^}]*\}", "metrics {...}", str(e))
    results.append(("skip with run.max_skipped_steps=2, resumed from a state whose "
                    "gradient norm is Inf", "'grad_norm': inf" in str(e) and "step 9:" in
                    message and "more than run.max_skipped_steps=2" in message,
                    f"steps 7 and 8 skipped, halted at the third: '{message}'"))
  for name, ok, observed in results:
    d.row(f"bad numbers: {name}", 1, ok, observed, started)
