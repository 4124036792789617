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
