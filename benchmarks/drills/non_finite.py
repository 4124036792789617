"""Non-finite numbers: NaN and Inf losses halt, or are skipped and counted."""

import re
import time

from etils import epath

from benchmarks.drills.harness import Drill, OVERRIDES, committed, records


# --- NaN / Inf (in process: the data iterator injects them) ------------------


def nan_drill(d: Drill):
  import jax.numpy as jnp
  import numpy as np
  from trainer import config as config_lib
  from trainer import train_step as train_step_lib
  from trainer.run import make_train_iterator
  from trainer.train_loop import NonFiniteLossError, StopFlag, run_steps

  started = time.monotonic()
  # Inf: a batch whose loss mask holds a 2 scales the loss by +Inf (its
  # gradients become Inf/NaN); every other batch's loss is multiplied by 1.
  plain_loss = train_step_lib.next_token_loss

  def loss_with_inf(logits_BTV, tokens_BT, segment_pos_BT, z_loss, loss_mask_BT):
    scale = jnp.where(jnp.max(loss_mask_BT) > 1, jnp.inf, 1.0)
    return plain_loss(logits_BTV, tokens_BT, segment_pos_BT, z_loss, loss_mask_BT) * scale

  train_step_lib.next_token_loss = loss_with_inf

  def config(**overrides):
    cd = config_lib.defaults()
    values = {**OVERRIDES, "data.dataset": "stdlib_bytes", "model.vocab_size": 256,
              "model.block_pattern": "RRA", "run.steps": 12, "checkpoint.save_every_steps": 2,
              "checkpoint.max_to_keep": 20, **overrides}
    for key, value in values.items():
      section, field = key.split(".")
      cd[section][field] = value
    return config_lib.build(cd)

  class Faulty:
    """The train iterator with NaN batches (token ids past the vocabulary)
    and Inf batches (a 2 in the loss mask) at the given steps."""

    def __init__(self, cfg, nan_steps=(), inf_steps=(), first_step=1):
      self.iterator, self.step = make_train_iterator(cfg), first_step
      self.nan_steps, self.inf_steps = set(nan_steps), set(inf_steps)

    def __iter__(self):
      return self

    def __next__(self):
      batch = next(self.iterator)
      batch["loss_mask"] = np.ones_like(batch["tokens"])
      if self.step in self.nan_steps:
        batch["tokens"] = np.full_like(batch["tokens"], 256)
      if self.step in self.inf_steps:
        batch["loss_mask"][0, -1] = 2
      self.step += 1
      return batch

    def get_state(self):
      return self.iterator.get_state()

    def set_state(self, state):
      self.iterator.set_state(state)

    def start_prefetch(self):
      pass

  results = []
  for kind, steps in (("NaN", {"nan_steps": (7,)}), ("Inf", {"inf_steps": (7,)})):
    workdir = d.path(f"nan_halt_{kind}")
    try:
      run_steps(config(), workdir, Faulty(config(), **steps))
      results.append((f"halt on {kind}", False, "did not halt"))
    except NonFiniteLossError as e:
      kept = committed(workdir)
      results.append((f"halt on {kind} at step 7", kept == [2, 4, 6],
                      f"NonFiniteLossError '{str(e)}'; committed {kept}"))
  # Skip: NaN at 3 and 9, Inf at 5; straight, and stopped after step 6 then resumed.
  faults = {"nan_steps": (3, 9), "inf_steps": (5,)}
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
  results.append(("skip: NaN at 3 and 9, Inf at 5; stopped at 6 and resumed",
                  same and straight[-1]["skipped_steps"] == 3,
                  f"skipped_steps {straight[-1]['skipped_steps']:.0f}, curve of the resumed "
                  f"run {'equal bit for bit' if same else 'DIFFERS'} to the straight one"))
  try:
    run_steps(config(**skip, **{"run.max_skipped_steps": 2}), d.path("nan_skip_limit"),
              Faulty(config(), **faults))
    results.append(("skip with run.max_skipped_steps=2", False, "did not halt"))
  except NonFiniteLossError as e:
    message = re.sub(r"metrics \{[^}]*\}", "metrics {...}", str(e))
    results.append(("skip with run.max_skipped_steps=2", "more than run.max_skipped_steps=2"
                    in message, f"halted at the third: '{message}'"))
  train_step_lib.next_token_loss = plain_loss
  for name, ok, observed in results:
    d.row(f"bad numbers: {name}", 1, ok, observed, started)
