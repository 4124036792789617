"""Resuming on another device count, and on another process count."""

import json
import shutil
import sys
import time

from etils import epath

from drills.harness import Drill, OVERRIDES, ROOT, Run, STEPS, committed, records


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


def two_processes(d: Drill, workdir: str, **overrides) -> Run:
  """The drill's run on 2 processes x 4 devices (launch.local); each
  process logs to <workdir>_logs/process_<i>.log."""
  flags_ = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()]
  return Run(workdir, d.out, command=[
      sys.executable, "-m", "launch.local", "--num_processes=2", "--devices_per_process=4",
      f"--log_dir={workdir}_logs", "--", sys.executable, "-m", "trainer.train",
      f"--config={ROOT}/configs/griffin_tiny.py", f"--workdir={workdir}", *flags_])


def topology_drill(d: Drill):
  """Saved on 1 process x 8 devices, resumed on 1 x 4, 1 x 2 and 2 x 4: the
  data position is rows consumed, the same on any of them."""
  reference = d.uninterrupted()
  resume_at = committed(reference)[0]
  for processes, devices in ((1, 4), (1, 2), (2, 4)):
    t0 = time.monotonic()
    workdir = trimmed_copy(reference, resume_at, d.path(f"topology_{processes}x{devices}"))
    run = (Run(workdir, d.out, devices=devices) if processes == 1
           else two_processes(d, workdir))
    code = run.finish()
    got, want = records(workdir), records(reference)
    later = range(resume_at + 1, STEPS + 1)
    worst = max(abs(got[s][-1]["loss"] / want[s][0]["loss"] - 1) for s in later)
    position = f"checkpoints/{STEPS}/data/metadata"
    same_data = (json.loads(epath.Path(workdir, position).read_text())
                 == json.loads(epath.Path(reference, position).read_text()))
    d.row(f"topology: saved on 1 process x 8 devices, resumed on {processes} x {devices}", 1,
          code == 0 and same_data and worst < 1e-5,
          f"exit {code}; data position at step {STEPS} "
          f"{'identical' if same_data else 'DIFFERENT'}; losses of steps "
          f"{resume_at + 1}-{STEPS} within {worst:.1e} (relative) of the 8-device run's "
          "(another summation order)", t0)
