"""Step metrics: throughput per device from the time between logged steps,
with evaluations left out; metrics writes that fail; the goodput report."""

import json
import pathlib
import subprocess
import sys
import time
import types

import jax
import pytest

from trainer import goodput, metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_throughput_leaves_out_the_time_evaluations_take(tmp_path, monkeypatch):
  clock = iter([100.0, 160.0, 230.0])  # the three writes below
  monkeypatch.setattr(metrics, "time", types.SimpleNamespace(time=lambda: next(clock)))
  writer = metrics.MetricsWriter(str(tmp_path), flops_per_step=8e12, tokens_per_step=800)
  writer.write(10, {"loss": 2.0})
  writer.write_eval(10, {"eval_loss": 2.5, "eval_seconds": 30.0}, 30.0)
  writer.write(20, {"loss": 1.5})  # 60 s for 10 steps, 30 s of them evaluating: 3 s a step
  writer.write_eval(20, {"lm_eval/x/acc": 0.5}, 0.0)
  writer.write(30, {"loss": 1.0})  # 70 s for 10 steps
  writer.close()
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [sorted(r) for r in records[:2]] == [["loss", "step"], ["eval_loss", "eval_seconds",
                                                                 "step"]]
  devices = jax.device_count()
  assert records[2]["tokens_per_s_per_device"] == pytest.approx(800 / 3 / devices)
  assert records[2]["tflops_per_device"] == pytest.approx(8 / 3 / devices)
  assert records[4]["tokens_per_s_per_device"] == pytest.approx(800 / 7 / devices)


def test_a_refused_metrics_write_never_ends_the_run(healthy_gcs, gcs_bucket):
  """The bucket refuses the metrics file's writes for a while (the issue saw
  a raw FileNotFoundError end a run): the run goes on, and the next write
  after storage heals carries every record."""
  workdir = f"{gcs_bucket}/metrics_outage"
  writer = metrics.MetricsWriter(workdir, flops_per_step=1e9, tokens_per_step=8)
  writer.write(1, {"loss": 3.0})
  healthy_gcs.fail(403, "metrics.jsonl")
  writer.write(2, {"loss": 2.0})  # logged, not raised
  assert writer.failed_writes == 1
  assert sorted(metrics.read_records(workdir)) == [1]
  healthy_gcs.fail(None)
  writer.write(3, {"loss": 1.0})
  writer.close()
  assert sorted(metrics.read_records(workdir)) == [1, 2, 3]
  assert writer.failed_writes == 1


def _run_record(start, end, resumed, first, last, steps_s, **seconds):
  phases = {p: seconds.get(p, 0.0) for p in goodput.PHASES}
  return {"process_start": start, "recorded_at": end, "resumed_from": resumed,
          "first_step": first, "last_step": last, "steps_seconds": steps_s,
          "redone_steps": 0, "seconds": phases}


def test_goodput_counts_steps_trained_again_and_the_time_between_runs(tmp_path):
  """Run A trains steps 1-10 (5 s each) and dies; run B resumes from step 6:
  A's steps 7-10 were trained again (20 s redone), 10 s passed with no run."""
  records = tmp_path / "goodput"
  records.mkdir()
  (records / "a.json").write_text(json.dumps(_run_record(
      0, 100, None, 1, 10, 50.0, startup=10, compile=20, checkpoint=5, data=5)))
  (records / "b.json").write_text(json.dumps(_run_record(
      110, 200, 6, 7, 20, 70.0, startup=5, restore=2, compile=3, checkpoint=5,
      evaluation=5)))
  r = goodput.report(str(tmp_path))
  assert r["wall_s"] == 200 and r["productive_s"] == 100 and r["goodput"] == 0.5
  assert r["badput_s"] == {"startup": 15, "restore": 2, "compile": 23, "checkpoint": 10,
                           "data": 5, "evaluation": 5, "redone": 20, "down": 10}
  assert r["other_s"] == 10
  done = subprocess.run([sys.executable, "-m", "trainer.goodput", f"--workdir={tmp_path}"],
                        capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 0 and done.stdout.startswith(
      "goodput 50.0%: 100.0 s of productive steps in 200.0 s of wall time over 2 run(s)")
  done = subprocess.run([sys.executable, "-m", "trainer.goodput", f"--workdir={records}"],
                        capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 1 and done.stderr.strip() == (
      f"trainer.goodput: no goodput records in {records}/goodput; they are written by "
      "python -m trainer.train runs")


def test_a_process_start_is_on_the_same_clock_as_its_records():
  """The down time between a kill and a restart is often under a second:
  the start read from /proc must be that precise against time.time()."""
  before = time.time()
  child = subprocess.run(
      [sys.executable, "-c", "import time; from trainer.goodput import process_start_time; "
                             "print(process_start_time(), time.time())"],
      capture_output=True, text=True, cwd=ROOT, check=True)
  start, now = map(float, child.stdout.split())
  # /proc counts clock ticks (10 ms); the child started after `before`.
  assert before - 0.02 <= start <= now
