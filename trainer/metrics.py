"""Step metrics: throughput and MFU, written to JSONL and TensorBoard (the
lines a person reads are trainer/progress.py's). A failed write (storage
briefly gone) is logged and retried at the next one; it never ends a run."""

import json
import shutil
import tempfile
import time

import jax
from absl import logging
from etils import epath

from sharding import topologies


def peak_flops(device: jax.Device) -> float | None:
  """Peak dense bf16 FLOP/s of `device` (sharding/topologies.py); None where
  the table does not know it, e.g. CPU: no MFU then."""
  generation = topologies.by_device_kind(device.device_kind)
  return generation.peak_bf16_flops if generation else None


class MetricsWriter:
  """Writes one record per logged step; only process 0 writes files."""

  def __init__(self, workdir: str, flops_per_step: float, tokens_per_step: int):
    self.flops_per_step = flops_per_step
    self.tokens_per_step = tokens_per_step
    self.num_devices = jax.device_count()
    self.peak = peak_flops(jax.devices()[0])
    self.is_writer = jax.process_index() == 0
    self.jsonl = epath.Path(workdir) / "metrics.jsonl"
    # GCS objects cannot be appended to (gcsfs silently overwrites), so the
    # file is rewritten whole, starting from what a previous run logged.
    self._lines = self.jsonl.read_text().splitlines() if (
        self.is_writer and self.jsonl.exists()) else []
    self.tensorboard = None
    self._remote = "://" in str(workdir)
    self._tensorboard_dir = epath.Path(workdir) / "tensorboard"
    if self.is_writer:
      # tensorboardX writes event files without TensorFlow. Its own gs:// writer
      # re-uploads from `__del__`, possibly after storage has gone away, so for
      # a remote workdir events are written locally and copied at each write.
      import tensorboardX
      local = tempfile.mkdtemp(prefix="tensorboard_") if self._remote else self._tensorboard_dir
      self.tensorboard = tensorboardX.SummaryWriter(str(local))
    self._last_time, self._last_step = None, None
    self.failed_writes = 0
    self._unwritten = False  # a failed write left metrics.jsonl behind the records

  def write(self, step: int, metrics: dict[str, float]) -> dict:
    """Records `metrics` of `step` with tokens/s, TFLOP/s per device and MFU
    measured since the previous call; returns the record."""
    now = time.time()
    record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
    if self._last_time is not None and step > self._last_step:
      seconds = (now - self._last_time) / (step - self._last_step)
      record["tokens_per_s_per_device"] = self.tokens_per_step / seconds / self.num_devices
      record["tflops_per_device"] = self.flops_per_step / seconds / self.num_devices / 1e12
      if self.peak:
        record["mfu"] = record["tflops_per_device"] * 1e12 / self.peak
    self._last_time, self._last_step = now, step
    logging.debug("%s", record)
    self._record(record)
    return record

  def write_eval(self, step: int, metrics: dict[str, float], seconds: float = 0.0):
    """Logs evaluation metrics of `step`. The evaluation's wall time,
    `seconds`, is left out of the next record's throughput."""
    if self._last_time is not None:
      self._last_time += seconds
    record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
    self._record(record)

  def _record(self, record: dict):
    if self.is_writer:
      self._lines.append(json.dumps(record))
      for key, value in record.items():
        if key != "step":
          self.tensorboard.add_scalar(key, value, record["step"])
      self._flush()

  def _flush(self, jsonl: bool = True):
    """Writes every record so far. A storage error is logged and counted,
    never raised: the records stay in memory for the next write."""
    try:
      if jsonl and self._lines:
        self._write_jsonl("\n".join(self._lines) + "\n")
        self._unwritten = False
      self._sync_tensorboard()
    except Exception as e:  # noqa: BLE001 - metrics must never end a run
      self._unwritten = True
      self.failed_writes += 1
      logging.warning("metrics write to %s failed (%s: %s); training goes on, the next "
                      "write retries (%d failed so far)", self.jsonl.parent,
                      type(e).__name__, e, self.failed_writes)

  def _write_jsonl(self, text: str):
    """Whole-file replacement that a kill cannot truncate: a GCS object is
    replaced atomically; a local file is written aside and renamed over."""
    if self._remote:
      self.jsonl.write_text(text)
    else:
      staged = self.jsonl.with_name(self.jsonl.name + ".tmp")
      staged.write_text(text)
      staged.replace(self.jsonl)

  def _sync_tensorboard(self):
    self.tensorboard.flush()
    if self._remote:
      local = epath.Path(self.tensorboard.logdir)
      for event_file in local.iterdir():
        (self._tensorboard_dir / event_file.name).write_bytes(event_file.read_bytes())

  def close(self):
    if self.tensorboard is not None:
      self._flush(jsonl=self._unwritten)  # the file is current unless a write failed
      self.tensorboard.close()
      if self._remote:
        shutil.rmtree(self.tensorboard.logdir, ignore_errors=True)
      self.tensorboard = None


def read_records(workdir) -> dict[int, list[dict]]:
  """The records of `<workdir>/metrics.jsonl` by step, in the order logged: a
  step that a restarted run trained again has one record per time (the
  resume drills compare every one of them with an uninterrupted run's)."""
  by_step = {}
  for line in (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    by_step.setdefault(record["step"], []).append(record)
  return by_step
