"""What a person watching a run sees, from process 0: one line per log
interval (step/total, loss, tokens/s, ETA), one per checkpoint, evaluation
and resume; on a terminal, a progress bar with those lines above it.

Library logs are apart from this: below WARNING they show only with
--verbosity=0 (common/cli.py). Every number is also in metrics.jsonl.
"""

import sys
import time


def duration(seconds: float) -> str:
  """1h02m, 3m05s, 42s."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
  """Lines on `stream` (default stdout) for the steps up to `total` of a run
  on `devices` devices; silent unless `enabled` (process 0)."""

  def __init__(self, total: int, devices: int, enabled: bool = True, stream=None):
    self.total, self.devices, self.enabled = total, devices, enabled
    self.stream = stream or sys.stdout
    self.bar = None
    self._start = None  # (time, step) of the first step after the compile

  def event(self, text: str):
    """One line: a checkpoint, an evaluation, a resume, a stop."""
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.write(text, file=self.stream)
    else:
      print(text, file=self.stream, flush=True)

  def begin(self, step: int):
    """Training starts (or resumes) after `step`, its program compiled."""
    self._start = (time.monotonic(), step)
    if self.enabled and self.stream.isatty():
      from tqdm import tqdm
      self.bar = tqdm(total=self.total, initial=step, unit="step", file=self.stream,
                      dynamic_ncols=True)

  def eta(self, step: int) -> str:
    started, first = self._start or (time.monotonic(), step)
    if step <= first:
      return "?"
    return duration((time.monotonic() - started) / (step - first) * (self.total - step))

  def interval(self, record: dict):
    """The line of a logged train step (a MetricsWriter record)."""
    if not self.enabled:
      return
    step = record["step"]
    parts = [f"step {step}/{self.total}", f"loss {record['loss']:.4f}"]
    if "tokens_per_s_per_device" in record:
      parts.append(f"{record['tokens_per_s_per_device'] * self.devices:,.0f} tokens/s")
    if "mfu" in record:
      parts.append(f"MFU {record['mfu']:.1%}")
    if record.get("skipped_steps"):
      parts.append(f"{record['skipped_steps']:.0f} skipped")
    parts.append(f"ETA {self.eta(step)}")
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      self.bar.set_postfix_str(" | ".join(parts[1:-1]))
    else:
      self.event(" | ".join(parts))

  def close(self):
    if self.bar is not None:
      self.bar.close()
      self.bar = None
