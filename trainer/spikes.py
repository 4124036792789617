"""The loss-spike guard (`run.spike_factor`): a step whose loss or gradient
norm is above `spike_factor` times its running median is a spike.

The median is over the last `run.spike_window` steps that were neither a
spike nor non-finite. The limits for step t use only steps up to t - 2 (the
loop reads a step's metrics one step late), so a run resumed from a
checkpoint, which saves this history with its counters, computes the same
limits as one that never stopped. Until the window is full there are none.

What a spike does (`run.spike_action`):
  skip      the compiled step keeps the old parameters and optimizer state
            (the same select as a non-finite step's), given the limits;
  rollback  the loop restores the newest committed step before the spike and
            goes on with the data after the spike's batches, which are
            skipped (PaLM's recipe: the data position is rows consumed, so
            the next batch is the one after those already read).
Either way the spike is counted, logged and saved with the run's counters;
more than `run.max_spikes` stop the run.
"""

import math
from typing import Callable

import numpy as np
from absl import logging

METRICS = ("loss", "grad_norm")


class LossSpikeError(RuntimeError):
  """More than `run.max_spikes` loss spikes, or one to roll back with no
  committed step before it."""


class SpikeGuard:
  """The running medians and the spike counts; saved with each checkpoint."""

  def __init__(self, factor: float, window: int, saved: dict | None = None):
    self.factor, self.window = factor, window
    saved = saved or {}
    # [step, loss, grad_norm] of the accepted steps, oldest first.
    self.history: list[list[float]] = [list(h) for h in saved.get("spike_history", [])]
    self.spikes: int = saved.get("spikes", 0)
    self.rollbacks: list[dict] = list(saved.get("rollbacks", []))

  @property
  def enabled(self) -> bool:
    return self.factor > 0

  def limits(self, step: int) -> np.ndarray:
    """[loss limit, grad-norm limit] for `step` (inf while the window of steps
    up to step - 2 is not full, or with the guard off)."""
    usable = [h for h in self.history if h[0] <= step - 2][-self.window:]
    if not self.enabled or len(usable) < self.window:
      return np.full(2, np.inf, np.float32)
    return (self.factor * np.median(np.array(usable)[:, 1:], axis=0)).astype(np.float32)

  def is_spike(self, step: int, metrics: dict) -> bool:
    """Whether finite `metrics` of `step` exceed its limits."""
    values = [metrics[k] for k in METRICS]
    return (all(math.isfinite(v) for v in values)
            and any(v > limit for v, limit in zip(values, self.limits(step))))

  def observe(self, step: int, metrics: dict, rollback: bool, max_spikes: int,
              last_committed: Callable[[], int | None]) -> bool:
    """Reads the settled `metrics` of `step` (adding the `spikes` count):
    a spike (the compiled step's verdict, or the limits' here when rolling
    back) is counted and logged, and True says to roll back; an ordinary step
    feeds the medians. LossSpikeError past `max_spikes`."""
    if not (metrics.get("spike") or (rollback and self.is_spike(step, metrics))):
      if not metrics.get("skipped"):
        self.accept(step, metrics)
      metrics["spikes"] = float(self.spikes)
      return False
    self.spikes += 1
    metrics["spikes"] = float(self.spikes)
    limits = self.limits(step)
    logging.warning("step %d: loss spike: loss %.4g, gradient norm %.4g, above run.spike_factor="
                    "%g x their running medians (limits %.4g, %.4g); %s (%d spikes so far)",
                    step, metrics["loss"], metrics["grad_norm"], self.factor, *limits,
                    "rolling back" if rollback else "its update was skipped", self.spikes)
    if self.spikes > max_spikes:
      raise LossSpikeError(
          f"step {step}: a loss spike (loss {metrics['loss']:.4g}, gradient norm "
          f"{metrics['grad_norm']:.4g}, limits {limits[0]:.4g}, {limits[1]:.4g}); "
          f"{self.spikes} spikes, more than run.max_spikes={max_spikes}: the run is "
          f"diverging. The last committed checkpoint, before the spikes' updates, is "
          f"{last_committed()}; a lower learning rate or a longer warmup may help")
    return rollback

  def accept(self, step: int, metrics: dict):
    """Records the metrics of a step that was neither a spike nor non-finite."""
    values = [metrics[k] for k in METRICS]
    if all(math.isfinite(v) for v in values):
      self.history = (self.history + [[step, *values]])[-(self.window + 2):]

  def rolled_back(self, at: int, to: int, batches_skipped: int, history: list):
    """Notes a rollback from step `at` to step `to`; the medians are those
    saved with step `to`."""
    self.rollbacks.append({"at": at, "to": to, "batches_skipped": batches_skipped})
    self.history = [list(h) for h in history]

  def counters(self) -> dict:
    return {"spikes": self.spikes, "rollbacks": self.rollbacks,
            "spike_history": self.history}
