"""`trainer.evaluate` and `trainer.sample` on a checkpoint of a tiny run:
numbers equal an independent forward pass, any device count, loss by
position with its plot, validation during training, and bad input."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from model.sampling import SamplingConfig
from pipeline.row_sources import ByteRows
from trainer.evaluate_lib import evaluate
from trainer.inference import data_parallel_mesh, open_checkpoint, restore_here
from trainer.loss import next_token_nll
from trainer.train_lib import make_eval_iterator
from trainer.sample_lib import sample
from trainer.train_loop import run_steps
from tests.cpu_devices import xla_flags
from tests.test_trainer import ROOT, data, make_config

STEPS = {"run.steps": 4, "run.eval_every_steps": 2, "run.eval_steps": 1,
         "checkpoint.save_every_steps": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step run that also scored 1 validation batch at steps 2 and 4."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = make_config(**STEPS)
  run_steps(config, workdir, data(config), eval_data=lambda: make_eval_iterator(config, 1))
  return workdir


@pytest.fixture(scope="module")
def evaluated(trained):
  return evaluate(trained, None, 2, make_eval_iterator, {}, length_multiple=4)


def test_loss_equals_an_independent_forward_pass(trained, evaluated):
  checkpointer, step, config, _ = open_checkpoint(trained, None, {})
  plan, params = restore_here(checkpointer, step, config, data_parallel_mesh())
  model = nnx.merge(plan.graphdef, params)
  rows = ByteRows("validation", 32, seed=None)  # in file order
  total, count, means = 0.0, 0, []
  for k in range(2):
    batch = rows.rows(np.arange(8 * k, 8 * (k + 1)))
    logits_BTV, _ = jax.jit(lambda t, s: model(t, s))(batch["tokens"], batch["segment_pos"])
    s, n = next_token_nll(logits_BTV, batch["tokens"], batch["segment_pos"])
    total, count = total + float(s), count + int(n)
    means.append(float(s) / int(n))
  assert evaluated["step"] == 4 and evaluated["tokens"] == count == 2 * 8 * 31
  np.testing.assert_allclose(evaluated["loss"], total / count, rtol=1e-6)
  # Batches of equal size: the standard error of the mean of the batch means.
  np.testing.assert_allclose(evaluated["loss_stderr"], np.std(means, ddof=1) / np.sqrt(2),
                             rtol=1e-5)
  assert evaluated["batches"] == 2
  assert evaluated["perplexity"] == pytest.approx(math.exp(evaluated["loss"]))


def test_loss_by_position_at_four_times_the_training_length(trained, evaluated):
  by_position = evaluated["by_position"]
  assert (by_position["train_seq_len"], by_position["seq_len"]) == (32, 128)
  # Each byte row is one document: every position 1..127 once per row.
  assert by_position["count"] == [0] + [2 * 8] * 127
  mean = np.sum(by_position["nll_sum"]) / np.sum(by_position["count"])
  assert by_position["loss"] == pytest.approx(mean)
  saved = json.loads((open(os.path.join(trained, "eval_4.json")).read()))
  assert saved["loss"] == evaluated["loss"] and len(saved["by_position"]["count"]) == 128
  png = open(os.path.join(trained, "loss_by_position_4.png"), "rb").read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


def test_validation_during_training_matches_evaluate(trained):
  records = [json.loads(line) for line in open(os.path.join(trained, "metrics.jsonl"))]
  logged = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
  assert sorted(logged) == [2, 4]
  again = evaluate(trained, 2, 1, make_eval_iterator, {}, length_multiple=0)
  np.testing.assert_allclose(logged[2], again["loss"], rtol=1e-6)


def test_the_command_restores_onto_another_device_count(trained, evaluated):
  env = dict(os.environ, XLA_FLAGS=xla_flags(2))
  done = subprocess.run(
      [sys.executable, "-m", "trainer.evaluate", f"--workdir={trained}", "--eval_batches=2",
       "--length_multiple=0", "--config.data.global_batch_size=8"],
      cwd=ROOT, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert (f"validation loss {evaluated['loss']:.4f} ± {evaluated['loss_stderr']:.4f} "
          "(standard error over 2 batches)") in done.stdout


def test_sampling_from_the_checkpoint(trained):
  texts, tokens_per_s = sample(trained, None, ["def ", "import o"],
                               SamplingConfig(temperature=0, max_new_tokens=8))
  assert len(texts) == 2 and all(0 < len(text.encode()) for text in texts)
  assert tokens_per_s > 0
  again, _ = sample(trained, None, ["import o"], SamplingConfig(temperature=0, max_new_tokens=8))
  assert again[0] == texts[1]  # greedy, and the batch did not change it


def test_an_override_changes_the_evaluation_only(trained):
  result = evaluate(trained, 4, 1, make_eval_iterator, {"data.seq_len": 64}, 0)
  assert result["seq_len"] == 64 and result["tokens"] == 8 * 63
  assert open_checkpoint(trained, 4, {})[2].data.seq_len == 32  # the saved config


@pytest.mark.parametrize("args, message", [
    (dict(workdir="/nonexistent/run"), "--workdir=/nonexistent/run does not exist"),
    (dict(step=3), r"--step=3 is not in .*; saved steps: \[2, 4\]"),
    (dict(overrides={"model.width": 64}), "embedder/embedding/value has shape \\(256, 128\\) "
                                          "in the checkpoint but .* in this model config"),
    # Hawk's groups of one block stack three layers where Griffin's stack one.
    (dict(overrides={"model.block_pattern": "R"}), r"groups/blocks/0/channel_pre_norm/scale/"
                                                   r"value has shape \(1, 128\) in the "
                                                   r"checkpoint but \(3, 128\)"),
    (dict(length_multiple=-1), "--length_multiple=-1 must be an integer >= 0"),
    (dict(overrides={"data.seq_len": 1}), "data.seq_len=1"),
])
def test_bad_input_is_named(trained, args, message):
  kwargs = dict(workdir=trained, step=None, eval_batches=1, make_batches=make_eval_iterator,
                overrides={}, length_multiple=0)
  with pytest.raises(ValueError, match=message):
    evaluate(**{**kwargs, **args})


# Orbax's read threads report the damage again where nothing can catch it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_parameters_are_named_with_the_steps_that_would_work(trained, tmp_path):
  import shutil

  from tests.test_reliability import _truncate_array_files
  workdir = tmp_path / "damaged"
  shutil.copytree(trained, workdir)
  _truncate_array_files(workdir / "checkpoints" / "4")
  with pytest.raises(ValueError, match=r"checkpoints/4 cannot be read: .* It is damaged .*"
                     r"give another step; the committed steps beside it: \[2, 4\]") as error:
    evaluate(str(workdir), None, 1, make_eval_iterator, {}, length_multiple=0)
  assert "tensorstore_spec" not in str(error.value) and len(str(error.value)) < 1000
  evaluate(str(workdir), 2, 1, make_eval_iterator, {}, length_multiple=0)  # step 2 is intact
