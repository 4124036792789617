"""Automatic recovery of a TPU VM job: `python -m launch.tpu_vm ... supervise`.

Brings the job up (creating the queued resource if it does not exist, or
starting the job on one that is ACTIVE), then watches it every
--poll_interval_s until it finishes:
  - the queued resource waiting or provisioning: wait;
  - ACTIVE, the job running: wait; exited 0: done (exit 0);
  - ACTIVE, the job exited non-zero or gone: start it again (it resumes from the
    workdir's last committed checkpoint);
  - the queued resource preempted, suspended, failed or gone: delete it,
    create it again, wait until ACTIVE, install, start the job.
Each recovery counts against --max_restarts and waits a backoff first
(--restart_backoff_s, doubling, at most --max_backoff_s); once the budget is
spent, it stops (exit 1) naming the last cause. Spot capacity and queued
resources come back this way; GKE's JobSet restarts pods itself.
"""

import subprocess
import time
from typing import Callable

# States a queued resource passes through on its way to ACTIVE.
_WAITING = ("ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "CREATING")
# States from which it never becomes ACTIVE again (or it is gone).
LOST = ("FAILED", "SUSPENDING", "SUSPENDED", "DELETING", "NOT_FOUND")


def queued_state(describe: list[str]) -> str | None:
  """The queued resource's state, NOT_FOUND if it does not exist, None if
  gcloud could not say (a network error: asked again at the next poll)."""
  print("+ " + " ".join(describe), flush=True)
  done = subprocess.run(describe, capture_output=True, text=True)
  if done.returncode == 0:
    return done.stdout.strip()
  if "NOT_FOUND" in done.stderr or "not found" in done.stderr.lower():
    return "NOT_FOUND"
  print(f"could not read the queued resource's state: {done.stderr.strip()}", flush=True)
  return None


def job_status(status_command: list[str]) -> tuple[str, int | None]:
  """("running", None), ("exited", code) or ("gone", None) from worker 0's
  answer to the status command."""
  print("+ " + " ".join(status_command), flush=True)
  done = subprocess.run(status_command, capture_output=True, text=True)
  words = done.stdout.split() if done.returncode == 0 else []
  if words[:1] == ["running"]:
    return "running", None
  if words[:1] == ["exited"] and len(words) > 1 and words[1].lstrip("-").isdigit():
    return "exited", int(words[1])
  return "gone", None


class Budget:
  """Restarts left and the backoff before each."""

  def __init__(self, max_restarts: int, backoff_s: float, max_backoff_s: float,
               sleep: Callable[[float], None] = time.sleep):
    self.max_restarts, self.backoff_s, self.max_backoff_s = max_restarts, backoff_s, max_backoff_s
    self.used, self.sleep = 0, sleep

  def spend(self, cause: str):
    """Waits the backoff and counts a restart; RuntimeError once none is left."""
    if self.used >= self.max_restarts:
      raise RuntimeError(f"gave up after {self.used} restarts (--max_restarts="
                         f"{self.max_restarts}): {cause}")
    wait = min(self.backoff_s * 2 ** self.used, self.max_backoff_s)
    self.used += 1
    print(f"restart {self.used} of {self.max_restarts} in {wait:.0f} s: {cause}", flush=True)
    self.sleep(wait)


def supervise(describe: list[str], status_command: list[str], bring_up: Callable[[], None],
              delete: Callable[[], None], start_job: Callable[[], None], budget: Budget,
              poll_interval_s: float, name: str) -> int:
  """The loop of the module docstring; returns the restarts used once the
  job exited 0. `bring_up` creates the queued resource, waits until ACTIVE,
  installs and starts the job (a RuntimeError from it, e.g. a resource that
  failed to provision, counts as a lost resource)."""
  state = queued_state(describe)
  pending = "bring_up" if state in LOST else "start_job"
  if state == "ACTIVE" and job_status(status_command)[0] == "running":
    pending = None  # already training: watch it
  while True:
    try:
      if pending == "bring_up":
        if state not in (None, "NOT_FOUND"):
          delete()
        bring_up()
      elif pending == "start_job":
        start_job()
    except RuntimeError as e:  # the resource could not be brought up
      budget.spend(str(e))
      state, pending = "FAILED", "bring_up"
      continue
    pending = None
    budget.sleep(poll_interval_s)
    state = queued_state(describe)
    if state is None or state in _WAITING:
      continue
    if state in LOST:
      budget.spend(f"queued resource {name} is {state}")
      pending = "bring_up"
      continue
    status, code = job_status(status_command)
    if status == "exited" and code == 0:
      print(f"the job on {name} finished (exit 0) after {budget.used} restarts", flush=True)
      return budget.used
    if status != "running":
      budget.spend(f"the job on {name} " + (f"exited with code {code}" if status == "exited"
                                            else "is not running"))
      pending = "start_job"
