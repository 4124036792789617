"""Goodput: productive training time over wall time, from the run's own records.

    python -m trainer.goodput --workdir=DIR_OR_GS_PATH

Every run (process 0) keeps one record, `<workdir>/goodput/<run id>.json`,
rewritten at each logged step and at the end: when the process started, the
seconds it spent in each phase, and the steps it trained. The report reads
all of them, so it covers every restart:

  wall        from the first run's process start to the last record
  productive  the step time of steps that count (not trained again later)
  badput      start-up (process start to program built: imports, devices,
              data), restore (or a fresh run's initialisation), compile, checkpoint (saves blocking the loop),
              data (waiting for batches), evaluation, redone (steps trained
              again after a restart or rollback), down (no run alive: the
              time between a run's last record and the next start)

ml-goodput-measurement computes the same breakdown but keeps its records in
Google Cloud Logging, which an offline run (and the tests) cannot reach.
"""

import contextlib
import json
import os
import time
import uuid

from absl import flags, logging
from etils import epath

PHASES = ("startup", "restore", "compile", "checkpoint", "data", "evaluation")


def process_start_time() -> float:
  """This process's start (Unix time) from /proc; now where there is none.
  Measured back from now with /proc/uptime: /proc/stat's boot time is whole
  seconds, an error as large as the down time between a kill and a restart."""
  try:
    with open("/proc/self/stat") as f:
      ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
  except (OSError, ValueError, IndexError):
    return time.time()


class Recorder:
  """The record of this run; a failed write is logged, never raised."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = epath.Path(workdir) / "goodput" / (
        f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.json")
    self.record = {"process_start": process_start_time(), "resumed_from": None,
                   "first_step": None, "last_step": None, "steps_seconds": 0.0,
                   "redone_steps": 0, "seconds": {p: 0.0 for p in PHASES}}
    self._in_phases = 0.0
    self.loop_starts()

  def resumed_from(self, step: int):
    """This run restored `step` of its workdir (its steps after that are new)."""
    self.record["resumed_from"] = step

  @contextlib.contextmanager
  def phase(self, name: str):
    """Counts the time inside as `name` (not as step time)."""
    start = time.time()
    try:
      yield
    finally:
      self.add(name, time.time() - start)

  def add(self, name: str, seconds: float):
    self.record["seconds"][name] += seconds
    self._in_phases += seconds

  def since_start(self, name: str):
    """Counts everything from the process start to now as `name` (start-up)."""
    self.add(name, time.time() - self.record["process_start"])

  def loop_starts(self):
    """From here on, time that no phase takes is step time."""
    self._mark, self._phases_at_mark = time.time(), self._in_phases

  def steps(self, last_step: int):
    """`last_step` is reached: the loop time since the last call, less its
    phases, is step time."""
    now = time.time()
    if self.record["first_step"] is None:
      self.record["first_step"] = last_step
      self.record["first_step_at"] = now
    self.record["last_step"] = last_step
    self.record["steps_seconds"] += (now - self._mark) - (self._in_phases - self._phases_at_mark)
    self._mark, self._phases_at_mark = now, self._in_phases

  def rolled_back(self, steps: int):
    self.record["redone_steps"] += steps

  def flush(self):
    if not self.enabled:
      return
    self.record["recorded_at"] = time.time()
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self.path.write_text(json.dumps(self.record))
    except Exception as e:  # noqa: BLE001 - accounting must never end a run
      logging.warning("goodput record %s not written: %s", self.path, e)


def read_runs(workdir: str) -> list[dict]:
  """Every run's record, oldest first."""
  directory = epath.Path(workdir) / "goodput"
  if not directory.exists():
    return []
  runs = [json.loads(p.read_text()) for p in directory.glob("*.json")]
  return sorted(runs, key=lambda r: r["process_start"])


def report(workdir: str) -> dict:
  """Wall, productive and badput seconds by cause over all runs (module docstring)."""
  runs = read_runs(workdir)
  if not runs:
    raise ValueError(f"no goodput records in {epath.Path(workdir) / 'goodput'}; they are "
                     "written by python -m trainer.train runs")
  badput = {p: sum(r["seconds"][p] for r in runs) for p in PHASES}
  badput["redone"] = badput["down"] = 0.0
  productive = 0.0
  for i, run in enumerate(runs):
    trained = (run["last_step"] - (run["first_step"] - 1)) if run["first_step"] else 0
    per_step = run["steps_seconds"] / trained if trained else 0.0
    # Steps a later run trained again: it resumed from before this run's last step.
    later = [r["resumed_from"] or 0 for r in runs[i + 1:i + 2]]
    lost = max(0, run["last_step"] - later[0]) if later and trained else 0
    lost = min(lost, trained) + run["redone_steps"]
    productive += run["steps_seconds"] - lost * per_step
    badput["redone"] += lost * per_step
    if i + 1 < len(runs):
      badput["down"] += max(0.0, runs[i + 1]["process_start"] - run["recorded_at"])
  wall = runs[-1]["recorded_at"] - runs[0]["process_start"]
  return {"runs": len(runs), "wall_s": wall, "productive_s": productive,
          "goodput": productive / wall if wall > 0 else 0.0, "badput_s": badput,
          "other_s": wall - productive - sum(badput.values())}


def format_report(r: dict) -> str:
  lines = [f"goodput {100 * r['goodput']:.1f}%: {r['productive_s']:.1f} s of productive "
           f"steps in {r['wall_s']:.1f} s of wall time over {r['runs']} run(s)"]
  # A fresh run's initial state is initialised, not restored: the same phase.
  labels = {"restore": "restore/init"}
  for cause, seconds in sorted(r["badput_s"].items(), key=lambda kv: -kv[1]):
    lines.append(f"  {labels.get(cause, cause):<12} {seconds:9.1f} s  "
                 f"{100 * seconds / r['wall_s']:5.1f}%")
  lines.append(f"  {'other':<12} {r['other_s']:9.1f} s  {100 * r['other_s'] / r['wall_s']:5.1f}%")
  return "\n".join(lines)


def main():
  print(format_report(report(flags.FLAGS.workdir)))


if __name__ == "__main__":  # the flag only here: the trainer has a --workdir of its own
  from common import cli
  flags.DEFINE_string("workdir", None, "The training run's workdir.", required=True)
  cli.run(main)
