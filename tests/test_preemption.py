"""Kills, one of them mid-save, and a SIGTERM through the real command leave
the loss curve bit-identical; after SIGTERM the last save gets the preemption
grace, counted from the signal. (tests/test_reliability.py has the faults
injected in process; drills/ runs the full drills.)"""

import os
import random
import re
import subprocess
import sys
import time

import pytest
from etils import epath

from tests.cpu_devices import xla_flags
from tests.test_reliability import OVERRIDES, ROOT, assert_same_curve
from trainer.checkpoint import committed_steps
from trainer.metrics import read_records as records
from trainer import goodput
from trainer.preemption import PreemptionTimeoutError, StopFlag, commit_within_grace


# --- through the command line: kills, preemption, another device count -------


class Run:
  """`python -m trainer.train` with OVERRIDES, its output read line by line."""

  def __init__(self, workdir, devices: int = 8, steps: int = 4):
    flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "run.steps": steps}.items()]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(devices))  # and the session's compilation cache
    self.process = subprocess.Popen(
        [sys.executable, "-m", "trainer.train", f"--config={ROOT}/configs/smoke.py",
         f"--workdir={workdir}", *flags, "--verbosity=0"],  # Orbax's INFO lines too
        cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    self.lines = []

  def wait_for(self, pattern: str) -> re.Match:
    for line in self.process.stdout:
      self.lines.append(line)
      match = re.search(pattern, line)
      if match:
        return match
    raise AssertionError(f"no line matched {pattern!r}:\n" + "".join(self.lines[-30:]))

  def finish(self) -> int:
    self.lines += self.process.stdout.readlines()
    return self.process.wait()

  def log(self) -> str:
    return "".join(self.lines)


def resumed_from(run: Run) -> int | None:
  match = re.search(r"resuming from .*/checkpoints/(\d+)", run.log())
  return int(match.group(1)) if match else None


def test_kills_and_a_preemption_leave_the_loss_curve_bit_identical(tmp_path):
  steps = 10  # room for the SIGTERM to land before the last step, however far run 2 got
  reference = Run(tmp_path / "reference", steps=steps)
  assert reference.finish() == 0, reference.log()
  chain = tmp_path / "chain"
  checkpoints = chain / "checkpoints"

  # 1. SIGKILL while step 4's save writes (step 2 is committed: a save first
  # waits for the one before it). Orbax logs a directory before creating it:
  # the first item's directory means the step's own exists.
  run = Run(chain, steps=steps)
  run.wait_for(r"Creating tmp directory .*checkpoints/4\.orbax-checkpoint-tmp/")
  run.process.kill()
  run.finish()
  assert list(checkpoints.glob("4.orbax-checkpoint-tmp*")), "the kill did not land mid-save"
  assert committed_steps(checkpoints) == [2]

  # 2. SIGKILL at a random moment after the resumed run's first step.
  run = Run(chain, steps=steps)
  run.wait_for(r"step \d+/\d+ \|")
  time.sleep(random.uniform(0, 0.3))
  run.process.kill()
  run.finish()
  assert resumed_from(run) == 2  # not the half-written step 4

  # 3. SIGTERM: the step after it is saved and committed, and the exit is 0.
  before = committed_steps(checkpoints)
  run = Run(chain, steps=steps)
  run.wait_for(r"step \d+/\d+ \|")
  run.process.terminate()
  assert run.finish() == 0, run.log()
  assert resumed_from(run) == before[-1]
  stopped = int(re.search(r"SIGTERM: step (\d+) is committed", run.log()).group(1))
  assert committed_steps(checkpoints)[-1] == stopped < steps

  run = Run(chain, steps=steps)
  assert run.finish() == 0, run.log()
  assert resumed_from(run) == stopped
  # Every record of a step, from whichever run logged it, equals the
  # uninterrupted run's.
  want = {step: rs[0] for step, rs in records(tmp_path / "reference").items()}
  got = records(chain)
  assert sorted(got) == sorted(want) == list(range(1, steps + 1))
  for step, logged in got.items():
    assert_same_curve(logged, [want[step]] * len(logged), keys=("loss", "grad_norm"))
  # The goodput records of the four runs: run 1's steps after step 2 were
  # trained again, and every restart left time with no run alive.
  accounting = goodput.report(str(chain))
  assert accounting["runs"] == 4
  assert accounting["badput_s"]["redone"] > 0 and accounting["badput_s"]["down"] > 0
  assert 0 < accounting["goodput"] < 1
  assert re.search(r"goodput \d+\.\d%: .* over 4 run\(s\)", run.log())



# --- preemption grace -------------------------------------------------------


class _Saving:
  """A checkpointer whose save of step 4 commits after `seconds`; step 2 is
  the last committed one."""

  directory, in_flight = epath.Path("/ckpt"), 4

  def __init__(self, seconds):
    self.done, self.abandoned = time.monotonic() + seconds, False

  def wait(self, deadline):
    time.sleep(max(0.0, min(deadline, self.done) - time.monotonic()))
    return self.done <= deadline

  def abandon(self):
    self.abandoned = True

  def latest_step(self):  # Orbax counts the step being saved
    return 4

  def last_committed(self, wait_s=0.0):
    return 2


def test_preemption_grace_counts_from_the_signal():
  stop = StopFlag()
  stop.signal_time = time.monotonic()
  assert commit_within_grace(_Saving(0.1), stop, 5.0) == 4  # in time: no error
  slow = _Saving(10.0)
  with pytest.raises(PreemptionTimeoutError, match=r"step 4 did not commit to /ckpt/4 within "
                     r"checkpoint.preemption_grace_s=0.2 s .* last committed step is 2"):
    commit_within_grace(slow, stop, 0.2)
  assert slow.abandoned
