"""Step metrics: throughput per device from the time between logged steps,
with evaluations left out."""

import json
import types

import jax
import pytest

from trainer import metrics


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
