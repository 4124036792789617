"""Fault drills: SIGKILLs, preemption, storage outages, a full or read-only
disk, denied writes, NaN/Inf, another device or process count. A tiny Griffin
(configs/griffin_tiny.py made smaller) trains through `python -m trainer.train`
subprocesses; each drill checks that nothing committed is lost and that the
loss curve equals an uninterrupted run's bit for bit. Prints a markdown table
(docs/reliability.md holds a run of it); tests/test_reliability.py is the CI-
sized version.

Command, from the repository root (about 15 minutes on a shared 2-core CPU;
the disk drills mount a tmpfs and an ext4 loop file: root; skipped otherwise):
  python -m benchmarks.drills --out=/tmp/griffin_drills
  python -m benchmarks.drills --drills=kill --kills=20

All runs share a persistent XLA cache in --out (a restarted job with a cache
configured compiles once); GCS is the test suite's emulator
(tests/conftest.py: GcsEmulator), stopped, restarted and made to refuse writes.
"""

import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time

from absl import app, flags, logging
from etils import epath

# For the in-process NaN drill: fake devices before JAX starts (what the tests use).
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from trainer.metrics import read_records as records  # noqa: E402 - after the device count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRILLS = ("kill", "preemption", "nan", "storage", "topology", "disk")
_OUT = flags.DEFINE_string("out", "/tmp/griffin_drills", "Workdirs, logs and the XLA cache "
                           "(emptied first).")
_DRILLS = flags.DEFINE_list("drills", list(DRILLS), f"Which of {list(DRILLS)}.")
_KILLS = flags.DEFINE_integer("kills", 20, "SIGKILLs of the kill drill, half of them aimed "
                              "at a save in flight.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
_OUTAGE_LIMIT = flags.DEFINE_integer("outage_limit_s", 1200, "How long the unhealed GCS "
                                     "outage may take to fail the run.")

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
                               f"--workdir={workdir}", *flags_]
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
    match = re.search(r"resuming from .*/checkpoints/(\d+)", self.log())
    return int(match.group(1)) if match else None


def final_error(run: Run) -> str:
  """The exception the run stopped with (trainer/train.py logs it first)."""
  match = re.search(r"training stopped: (.*)", run.log())
  return match.group(1) if match else ""


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


# --- kills --------------------------------------------------------------------


def kill_drill(d: Drill, kills: int, rng: random.Random):
  started = time.monotonic()
  reference, chain = d.uninterrupted(), d.path("kill")
  mid_save = wrong_resumes = 0
  for k in range(kills):
    before = committed(chain)
    start = before[-1] if before else 0
    launched = time.time()
    run = Run(chain, d.out)
    if start + 2 * SAVE_EVERY >= STEPS:
      raise RuntimeError(f"the chain reached step {start} of {STEPS} before {kills} kills; "
                         "raise STEPS")
    if k % 2 == 0:  # aimed: at one of the next two saves, in flight
      target = start + SAVE_EVERY * rng.randint(1, 2)
      run.wait_for(MID_SAVE.replace(r"(\d+)", str(target)))
    else:  # a random moment: after one of the next steps, a random fraction of a second
      run.wait_for(rf"step {start + rng.randint(1, 2 * SAVE_EVERY)} \|")
      time.sleep(rng.uniform(0, 0.5))
    run.process.kill()
    # Only this run's: a temporary directory stays until its step is saved again.
    half_written = [p for p in glob.glob(f"{chain}/checkpoints/*.orbax-checkpoint-tmp*")
                    if os.path.getmtime(p) >= launched]
    run.finish()
    mid_save += bool(half_written)
    wrong_resumes += run.resumed_from() != (before[-1] if before else None)
    print(f"  kill {k + 1}: resumed from {run.resumed_from()}, committed then {before}, "
          f"mid-save: {bool(half_written)}", flush=True)
  before = committed(chain)
  final = Run(chain, d.out)
  code = final.finish()
  wrong_resumes += final.resumed_from() != before[-1]
  differs = same_curve(chain, reference)
  d.row("kill: SIGKILL at random moments, restart each time", kills,
        code == 0 and not differs and not wrong_resumes and mid_save > 0,
        f"{mid_save} kills landed mid-save (a temporary step directory on disk); every "
        f"restart resumed from the newest committed step ({wrong_resumes} did not); final "
        f"curve {'differs: ' + differs if differs else 'equal bit for bit'} to the "
        f"uninterrupted run's ({STEPS} steps, every record of every re-run step)", started)


# --- preemption ---------------------------------------------------------------


def preemption_drill(d: Drill, rng: random.Random):
  started = time.monotonic()
  reference, chain = d.uninterrupted(), d.path("preemption")
  latencies, problems = [], []
  for _ in range(3):
    before = committed(chain)
    run = Run(chain, d.out)
    run.wait_for(rf"step {rng.randrange((before or [0])[-1] + 1, STEPS - 2)} \|")
    run.process.terminate()
    code = run.finish()
    match = re.search(r"SIGTERM: step (\d+) is committed, ([\d.]+) s after", run.log())
    if code != 0 or not match or committed(chain)[-1] != int(match.group(1)):
      problems.append(f"exit {code}, {run.log_path}")
    else:
      latencies.append(float(match.group(2)))
  # A grace too short to commit: a clear message, exit 1, the step not counted.
  before = committed(chain)
  run = Run(chain, d.out, **{"checkpoint.preemption_grace_s": 0.001})
  run.wait_for(r"step \d+ \|")
  run.process.terminate()
  code = run.finish()
  short_grace_ok = (code == 1 and "did not commit" in run.log()
                    and committed(chain) == before)
  final = Run(chain, d.out)
  code = final.finish()
  differs = same_curve(chain, reference)
  d.row("preemption: SIGTERM (grace 30 s), then resume", 3,
        not problems and code == 0 and not differs,
        f"exit 0 each time, the step after the signal committed "
        f"{min(latencies, default=0):.2f}-{max(latencies, default=0):.2f} s after it; "
        f"resumed curve {'differs: ' + differs if differs else 'equal bit for bit'}"
        + (f"; problems: {problems}" if problems else ""), started)
  d.row("preemption: SIGTERM with preemption_grace_s=0.001", 1, short_grace_ok,
        "exit 1, 'did not commit ... within checkpoint.preemption_grace_s=0.001 s', the "
        "half-saved step not listed; the next run resumed exactly (above)", started)


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
      return json.dumps(self.iterator.get_state()).encode()

    def set_state(self, state):
      self.iterator.set_state(json.loads(state))

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


# --- storage: GCS outage, denied writes, slow storage at preemption ------------


def storage_drill(d: Drill):
  sys.path.insert(0, ROOT)
  from tests.conftest import GcsEmulator  # the test suite's emulator with fault injection

  reference = d.uninterrupted()
  emulator = GcsEmulator(d.path("gcs")).start()
  try:
    storage_trials(d, emulator, reference)
  finally:
    emulator.stop()


def storage_trials(d: Drill, emulator, reference: str):
  os.environ.update(emulator.env)
  bucket = emulator.make_bucket("drills")
  gcs = dict(env=emulator.env, **{"checkpoint.use_ocdbt": False})

  def restart_after(seconds):
    timer = threading.Timer(seconds, emulator.start)
    timer.start()
    return timer

  # Short outages: stopped as a save starts, back after 5 s and 20 s.
  for seconds in (5, 20):
    t0, workdir = time.monotonic(), f"{bucket}/outage_{seconds}s"
    run = Run(workdir, d.out, **gcs)
    run.wait_for(SAVE_STARTED.replace(r"(\d+)", "8"))
    emulator.stop()
    restart_after(seconds).join()
    code = run.finish()
    differs = same_curve(workdir, reference)
    d.row(f"storage: GCS emulator stopped as step 8's save starts, back after {seconds} s",
          1, code == 0 and not differs,
          f"the clients' retries (tensorstore, gcsfs) carried the save through; exit {code}; "
          f"curve {'differs: ' + differs if differs else 'equal bit for bit'}", t0)

  # A long outage: stopped as a save starts, not back until the run gives up.
  t0, workdir = time.monotonic(), f"{bucket}/outage_long"
  run = Run(workdir, d.out, **gcs)
  run.wait_for(SAVE_STARTED.replace(r"(\d+)", "8"))
  emulator.stop()
  down = time.monotonic()
  try:
    code = run.finish(timeout=_OUTAGE_LIMIT.value)
  except subprocess.TimeoutExpired:
    run.kill()
    code = None
  gave_up = time.monotonic() - down
  emulator.start()
  error = final_error(run)
  kept = committed(workdir)
  resumed = Run(workdir, d.out, **gcs)
  resumed_code = resumed.finish()
  differs = same_curve(workdir, reference)
  d.row("storage: GCS emulator stopped as step 8's save starts, back only after the run "
        "gave up", 1, code not in (0, None) and bool(error) and 8 not in kept
        and resumed_code == 0 and not differs,
        f"exit {code} {gave_up:.0f} s into the outage: '{error[:240]}...'"
        + f"; committed {kept}; with storage back the rerun resumed from "
        f"{resumed.resumed_from()} and its curve is "
        f"{'different: ' + differs if differs else 'equal bit for bit'}", t0)

  # Permission denied: every checkpoint write refused with 403 from step 12 on.
  t0, workdir = time.monotonic(), f"{bucket}/denied"
  run = Run(workdir, d.out, **gcs)
  run.wait_for(r"step 10 \|")
  emulator.fail(403, "denied/checkpoints/")
  code = run.finish()
  emulator.fail(None)
  error = final_error(run)
  kept = committed(workdir)
  resumed = Run(workdir, d.out, **gcs)
  resumed_code = resumed.finish()
  differs = same_curve(workdir, reference)
  d.row("storage: GCS answers 403 to checkpoint writes mid-run", 1,
        code != 0 and "CheckpointSaveError" in error and resumed_code == 0 and not differs,
        f"exit {code}: '{error[:240]}...'"
        + f"; committed {kept}; after the fault the rerun resumed from "
        f"{resumed.resumed_from()}, curve {'differs' if differs else 'equal bit for bit'}",
        t0)

  # Preemption while storage hangs (503 on checkpoint writes, retried): out of grace.
  t0, workdir = time.monotonic(), f"{bucket}/slow_preemption"
  run = Run(workdir, d.out, **gcs, **{"checkpoint.preemption_grace_s": 5.0})
  run.wait_for(r"step 10 \|")
  emulator.fail(503, "slow_preemption/checkpoints/")
  signal_time = time.monotonic()
  run.process.terminate()
  code = run.finish()
  exit_s = time.monotonic() - signal_time
  emulator.fail(None)
  kept = committed(workdir)
  resumed = Run(workdir, d.out, **gcs)
  resumed_code = resumed.finish()
  differs = same_curve(workdir, reference)
  d.row("preemption: SIGTERM while GCS answers 503 to checkpoint writes (grace 5 s)", 1,
        code == 1 and "did not commit" in run.log() and resumed_code == 0 and not differs,
        f"exit {code} {exit_s:.1f} s after the signal, 'did not commit ... within "
        f"checkpoint.preemption_grace_s=5.0 s'; committed {kept}; the rerun resumed from "
        f"{resumed.resumed_from()}, curve {'differs' if differs else 'equal bit for bit'}",
        t0)


# --- a full local disk (a size-limited tmpfs), a denied one (ext4, chattr +i) --


def disk_drill(d: Drill):
  started = time.monotonic()
  reference = d.uninterrupted()
  disk = d.path("disk")
  os.makedirs(disk, exist_ok=True)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", disk],
                           capture_output=True, text=True)
  if mounted.returncode:
    d.row("disk full", 0, True, f"skipped: no tmpfs ({mounted.stderr.strip()})", started)
    return
  try:
    # Full: checkpoints accumulate (max_to_keep=100) until one does not fit.
    workdir = os.path.join(disk, "full")
    run = Run(workdir, d.out, **{"checkpoint.max_to_keep": 100})
    code = run.finish()
    error = final_error(run)
    kept = committed(workdir)
    subprocess.run(["mount", "-o", "remount,size=64m", disk], check=True)
    resumed = Run(workdir, d.out, **{"checkpoint.max_to_keep": 100})
    resumed_code = resumed.finish()
    differs = same_curve(workdir, reference)
    d.row("disk full (a 5 MB tmpfs) at save time", 1,
          code != 0 and bool(error) and resumed_code == 0 and not differs,
          f"exit {code}: '{error[:240]}...'"
          + f"; committed {kept[:2]}...{kept[-2:]}; with room again (remount 64 MB) the "
          f"rerun resumed from {resumed.resumed_from()}, curve "
          f"{'differs' if differs else 'equal bit for bit'}", started)

  finally:
    subprocess.run(["umount", "-l", disk], check=False)
  # Permission denied: root passes any mode bits, but not an immutable
  # directory (chattr +i, ext4 in a loop file): step 12's save cannot start.
  t0, image, mounted_at = time.monotonic(), d.path("ext4.img"), d.path("ext4")
  os.makedirs(mounted_at)
  with open(image, "wb") as f:
    f.truncate(64 << 20)
  made = subprocess.run(f"mkfs.ext4 -q {image} && mount -o loop {image} {mounted_at}",
                        shell=True, capture_output=True, text=True)
  if made.returncode:
    d.row("permission denied at save time", 0, True,
          f"skipped: no ext4 loop mount ({made.stderr.strip()})", t0)
    return
  try:
    workdir = os.path.join(mounted_at, "denied")
    run = Run(workdir, d.out)
    run.wait_for(r"step 10 \|")
    subprocess.run(["chattr", "+i", os.path.join(workdir, "checkpoints")], check=True)
    code = run.finish()
    subprocess.run(["chattr", "-i", os.path.join(workdir, "checkpoints")], check=True)
    error = final_error(run)
    kept = committed(workdir)
    resumed = Run(workdir, d.out)
    resumed_code = resumed.finish()
    differs = same_curve(workdir, reference)
    d.row("permission denied at save time (an immutable checkpoints/ on ext4)", 1,
          code != 0 and "CheckpointSaveError" in error and resumed_code == 0 and not differs,
          f"exit {code}: '{error[:240]}...'; committed {kept}; writable again, the rerun "
          f"resumed from {resumed.resumed_from()}, curve "
          f"{'differs' if differs else 'equal bit for bit'}", t0)
  finally:
    subprocess.run(["umount", "-l", mounted_at], check=False)


# --- another device or process count ------------------------------------------


def trimmed_copy(workdir: str, step: int, target: str) -> str:
  shutil.copytree(workdir, target)
  for path in epath.Path(target, "checkpoints").iterdir():
    if path.name.isdigit() and int(path.name) > step:
      shutil.rmtree(path)
  lines = [line for line in epath.Path(target, "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["step"] <= step]
  epath.Path(target, "metrics.jsonl").write_text("\n".join(lines) + "\n")
  return target


def topology_drill(d: Drill):
  started = time.monotonic()
  reference = d.uninterrupted()
  resume_at = committed(reference)[0]
  for devices in (4, 2):
    t0 = time.monotonic()
    workdir = trimmed_copy(reference, resume_at, d.path(f"topology_{devices}"))
    run = Run(workdir, d.out, devices=devices)
    code = run.finish()
    got, want = records(workdir), records(reference)
    later = range(resume_at + 1, STEPS + 1)
    worst = max(abs(got[s][-1]["loss"] / want[s][0]["loss"] - 1) for s in later)
    position = f"checkpoints/{STEPS}/data/process_0-of-1.json"
    same_data = (json.loads(epath.Path(workdir, position).read_text())
                 == json.loads(epath.Path(reference, position).read_text()))
    d.row(f"topology: saved on 1 process x 8 devices, resumed on 1 x {devices}", 1,
          code == 0 and same_data and worst < 1e-5,
          f"resumed from step {run.resumed_from()}; data position at step {STEPS} "
          f"{'identical' if same_data else 'DIFFERENT'}; losses of steps "
          f"{resume_at + 1}-{STEPS} within {worst:.1e} (relative) of the 8-device run's "
          "(another summation order)", t0)
  t0 = time.monotonic()
  workdir = trimmed_copy(reference, resume_at, d.path("topology_2x4"))

  def two_processes(workdir, *extra):
    flags_ = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    return Run(workdir, d.out, command=[
        sys.executable, "-m", "launch.local", "--num_processes=2", "--devices_per_process=4",
        f"--log_dir={workdir}_logs", "--", sys.executable, "-m", "trainer.train",
        f"--config={ROOT}/configs/griffin_tiny.py", f"--workdir={workdir}", *flags_, *extra])

  code = two_processes(workdir).finish()
  logs = "".join(p.read_text() for p in epath.Path(f"{workdir}_logs").glob("*.log"))
  refusal = re.search(r"ValueError: (checkpoint .* holds the data position of .*)", logs)
  step_dir = f"{workdir}/checkpoints/{resume_at}"
  advised = d.path("topology_2x4_init_from")
  followed = two_processes(advised, f"--init_from={step_dir}").finish()
  d.row("topology: saved on 1 process x 8 devices, resumed on 2 processes x 4", 1,
        code != 0 and bool(refusal) and followed == 0,
        (f"refused before compiling: '{refusal.group(1)[:260]}'" if refusal
         else f"exit {code}, no refusal found") + f"; following it (--init_from) ran to "
        f"the end: exit {followed}", t0)
  del started


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax's listings of the drill's own checks
  out = _OUT.value
  if os.path.exists(out):
    for mounted in ("disk", "ext4"):
      subprocess.run(["umount", "-l", os.path.join(out, mounted)], capture_output=True)
    shutil.rmtree(out)
  os.makedirs(out)
  rng = random.Random(_SEED.value)
  d = Drill(out)
  print("| drill | trials | outcome | seconds |\n|---|---|---|---|", flush=True)
  unknown = sorted(set(_DRILLS.value) - set(DRILLS))
  if unknown:
    raise ValueError(f"--drills={','.join(_DRILLS.value)}: {unknown} not among {list(DRILLS)}")
  for name in _DRILLS.value:
    started = time.monotonic()
    try:
      {"kill": lambda: kill_drill(d, _KILLS.value, rng),
       "preemption": lambda: preemption_drill(d, rng),
       "nan": lambda: nan_drill(d), "storage": lambda: storage_drill(d),
       "topology": lambda: topology_drill(d), "disk": lambda: disk_drill(d)}[name]()
    except Exception as e:  # noqa: BLE001 - a drill that breaks is a failed row
      d.row(f"{name}: the drill itself broke", 1, False, f"{type(e).__name__}: {e}", started)
    for run in Run.started:  # none outlives its drill
      if run.process.poll() is None:
        run.kill()
  print("\n| drill | trials | outcome | seconds |\n|---|---|---|---|")
  for drill, trials, outcome, seconds in d.rows:
    print(f"| {drill} | {trials} | {outcome} | {seconds:.0f} |")
  print(f"\n{len(d.rows) - d.failures} of {len(d.rows)} rows passed; logs in {out}/logs")
  return 1 if d.failures else 0


if __name__ == "__main__":
  app.run(main)
