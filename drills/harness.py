"""The drills' harness: trainer subprocesses (`Run`), the uninterrupted
reference run, curve comparison and the table's rows (`Drill`)."""

import os
import re
import subprocess
import sys
import threading
import time

from etils import epath

# For the in-process NaN drill: fake devices before JAX starts (what the tests use).
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from trainer.metrics import read_records as records  # noqa: E402 - after the device count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS, SAVE_EVERY = 100, 4
# A Griffin ((R, R, A) blocks, local attention) that compiles in seconds.
OVERRIDES = {"model.width": 32, "model.lru_width": 32, "model.head_dim": 16,
             "model.depth": 3, "model.gate_blocks": 2, "model.attention_window": 8,
             "data.seq_len": 32, "data.global_batch_size": 8, "optimizer.warmup_steps": 2,
             "run.steps": STEPS, "run.log_every_steps": 1,
             "checkpoint.save_every_steps": SAVE_EVERY, "checkpoint.max_to_keep": 3}
SAVE_STARTED = r"Started save checkpoint @ .*checkpoints/(\d+)\."
# Orbax logs a directory before it creates it: the first item's directory
# being logged means the step's own temporary directory exists.
MID_SAVE = r"Creating tmp directory .*checkpoints/(\d+)\.orbax-checkpoint-tmp/"


class Run:
  """One `python -m trainer.train` process; its output read by a thread,
  kept whole and written to <out>/logs/<name>.log."""

  counter, started = 0, []

  def __init__(self, workdir, out: str, devices: int = 8, env: dict | None = None,
               command: list[str] | None = None, **overrides):
    flags_ = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()]
    self.command = command or [sys.executable, "-m", "trainer.train",
                               f"--config={ROOT}/configs/griffin_tiny.py",
                               f"--workdir={workdir}", *flags_,
                               "--verbosity=0"]  # Orbax's INFO lines, which the drills read
    Run.counter += 1
    self.log_path = os.path.join(out, "logs", f"{Run.counter:03d}.log")
    os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
    self.process = subprocess.Popen(
        self.command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=dict(os.environ, **(env or {}), JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                 JAX_COMPILATION_CACHE_DIR=os.path.join(out, "xla_cache"),
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0"))
    Run.started.append(self)
    self.lines, self.changed = [], threading.Condition()
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    with open(self.log_path, "w", buffering=1) as log:
      log.write(" ".join(self.command) + "\n")
      for line in self.process.stdout:
        log.write(line)
        with self.changed:
          self.lines.append(line)
          self.changed.notify_all()
    with self.changed:
      self.lines.append(None)  # end of output
      self.changed.notify_all()

  def wait_for(self, pattern: str, timeout: float = 300) -> re.Match | None:
    """The first line from now on matching `pattern`; None if the process ended."""
    deadline, seen = time.monotonic() + timeout, len(self.lines)
    with self.changed:
      while True:
        for line in self.lines[seen:]:
          if line is None:
            return None
          match = re.search(pattern, line)
          if match:
            return match
        seen = len(self.lines)
        if not self.changed.wait(max(0.0, deadline - time.monotonic())):
          raise TimeoutError(f"{pattern!r} not seen within {timeout} s: {self.log_path}")

  def finish(self, timeout: float = 600) -> int:
    code = self.process.wait(timeout)
    self.reader.join()
    return code

  def kill(self):
    self.process.kill()
    self.finish()

  def log(self) -> str:
    return "".join(line for line in self.lines if line)

  def resumed_from(self) -> int | None:
    """The step it resumed from (the last one tried: a corrupt step is set aside)."""
    steps = re.findall(r"resuming from .*/checkpoints/(\d+)", self.log())
    return int(steps[-1]) if steps else None


def final_error(run: Run) -> str:
  """The exception the run stopped with: trainer/train.py logs it first, or,
  for bad input and damaged checkpoints, common/cli.py's one line."""
  match = re.search(r"training stopped: (.*)|^trainer\.train: (.*)", run.log(), re.MULTILINE)
  return (match.group(1) or match.group(2)) if match else ""


def committed(workdir) -> list[int]:
  from trainer.checkpoint import committed_steps
  checkpoints = epath.Path(workdir) / "checkpoints"
  return committed_steps(checkpoints) if checkpoints.exists() else []


def same_curve(workdir, reference, steps=range(1, STEPS + 1), keys=("loss", "grad_norm")):
  """'' if every record of every step equals the reference's bit for bit
  (NaN equals NaN), else what differs."""
  want, got = records(reference), records(workdir)
  for step in steps:
    if step not in got:
      return f"step {step} never logged"
    for record in got[step]:
      for key in keys:
        a, b = record.get(key), want[step][0].get(key)
        if not (a == b or (a != a and b != b)):
          return f"step {step} {key}: {a!r} != {b!r}"
  return ""


class Drill:
  """Rows of the table: (drill, trials, outcome, seconds), and notes."""

  def __init__(self, out: str):
    self.out, self.rows, self.failures = out, [], 0
    self.reference = None

  def row(self, drill: str, trials: int, ok: bool, observed: str, started: float):
    self.rows.append((drill, trials, ("pass: " if ok else "FAIL: ") + observed,
                      time.monotonic() - started))
    self.failures += not ok
    print(f"| {drill} | {trials} | {self.rows[-1][2]} | {self.rows[-1][3]:.0f} |", flush=True)

  def path(self, name: str) -> str:
    return os.path.join(self.out, name)

  def uninterrupted(self) -> str:
    """The reference: every drill's curve must equal this one's."""
    if self.reference is None:
      self.reference = self.path("reference")
      run = Run(self.reference, self.out)
      if run.finish() != 0:
        raise RuntimeError(f"the uninterrupted run failed: {run.log_path}")
    return self.reference


