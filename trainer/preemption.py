"""Preemption: SIGTERM sets a flag the loop checks at step boundaries, and the
last save gets `checkpoint.preemption_grace_s` from the signal to commit."""

import signal
import threading
import time

from trainer.checkpoint import Checkpointer


class PreemptionTimeoutError(RuntimeError):
  """SIGTERM came, and a save did not commit within
  `checkpoint.preemption_grace_s` of it; the last committed step stands."""


class StopFlag:
  """Set by SIGTERM (preemption); the loop checks it at step boundaries.

  `signal_time` (time.monotonic()) is when SIGTERM came: the grace period
  for committing the last step counts from it. A flag set otherwise (e.g.
  a subclass that stops early) has none and waits for its save as usual.
  """

  def __init__(self):
    self.event = threading.Event()
    self.signal_time = None

  def install(self):
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def _on_sigterm(self, signum, frame):
    del signum, frame
    if self.signal_time is None:
      self.signal_time = time.monotonic()
    self.event.set()

  def __bool__(self):
    return self.event.is_set()


def commit_within_grace(checkpointer: Checkpointer, stop: StopFlag, grace_s: float):
  """After SIGTERM: waits for the save in flight to commit, at most until
  `grace_s` seconds after the signal; returns its step (None: there was
  none). PreemptionTimeoutError if it did not commit in time."""
  step = checkpointer.in_flight
  if checkpointer.wait(deadline=stop.signal_time + grace_s):
    return step
  checkpointer.abandon()
  raise PreemptionTimeoutError(
      f"SIGTERM: step {step} did not commit to {checkpointer.directory / str(step)} "
      f"within checkpoint.preemption_grace_s={grace_s} s of the signal; it does not "
      f"count, the last committed step is {checkpointer.last_committed()}. Storage was "
      "slow or unreachable; a longer grace (below the scheduler's notice) or more "
      "frequent checkpoint.save_every_steps loses less.")
