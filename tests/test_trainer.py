"""The trainer end to end: pinned losses through the real entry point, exact
resume (local and gs://), keep policy, SIGTERM, NaN halt, several processes."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from pipeline.row_sources import ByteRows
from pipeline.row_stream import DataStream
from tests.cpu_devices import xla_flags
from trainer import config as config_lib
from trainer.preemption import StopFlag
from trainer.train_loop import NonFiniteLossError, run_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {"data.dataset": "stdlib_bytes", "model.vocab_size": 256, "data.seq_len": 32, "data.global_batch_size": 8,
             "optimizer.warmup_steps": 2, "run.steps": 6, "run.log_every_steps": 1,
             "checkpoint.save_every_steps": 3}


def make_config(base=None, defaults=None, **overrides):
  """`base` (this file's OVERRIDES if None) and `overrides` over `defaults`
  (a ConfigDict; `config_lib.defaults()` if None)."""
  cd = config_lib.defaults() if defaults is None else defaults
  return config_lib.build(config_lib.with_overrides(
      cd, {**(OVERRIDES if base is None else base), **overrides}))


def data(config):
  """The byte rows of a 200 kB stdlib prefix (faster than the default 2 MB)."""
  rows = ByteRows("train", config.data.seq_len, config.data.shuffle_seed, max_bytes=200_000)
  return DataStream({"stdlib_bytes": rows}, {"stdlib_bytes": 1.0},
                    global_batch_size=config.data.global_batch_size,
                    seq_len=config.data.seq_len, seed=config.data.shuffle_seed,
                    process_index=0, process_count=1)


class Hooked:
  """A data iterator that calls `hook(i, batch) -> batch` on the i-th batch and
  keeps the data position (get_state/set_state) working."""

  def __init__(self, iterator, hook):
    self.iterator, self.hook, self.i = iterator, hook, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = self.hook(self.i, next(self.iterator))
    self.i += 1
    return batch

  def get_state(self) -> dict:
    return self.iterator.get_state()

  def set_state(self, state: dict):
    self.iterator.set_state(state)


def losses(history):
  return [h["loss"] for h in history]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """6 steps without interruption."""
  config = make_config()
  return losses(run_steps(config, str(tmp_path_factory.mktemp("straight")), data(config)))


def run_in_two_halves(workdir, **overrides):
  first = run_steps(make_config(**{**overrides, "run.steps": 3}), workdir, data(make_config()))
  second = run_steps(make_config(**overrides), workdir, data(make_config()))  # from step 3
  return losses(first) + losses(second)


def test_resume_is_bit_identical(straight_run, tmp_path, caplog):
  assert run_in_two_halves(str(tmp_path)) == straight_run  # exact, not approximate
  # Once more: the run is finished, which it says, and nothing is built.
  with caplog.at_level(logging.WARNING):
    assert run_steps(make_config(), str(tmp_path), iter([])) == []
  assert f"nothing to train: {tmp_path} holds step 6 and run.steps=6" in caplog.text


def test_resume_on_gcs_is_bit_identical(straight_run, gcs_bucket):
  # OCDBT off: see CheckpointConfig.use_ocdbt (an emulator limitation).
  workdir = f"{gcs_bucket}/resume"
  assert run_in_two_halves(workdir, **{"checkpoint.use_ocdbt": False}) == straight_run
  from etils import epath
  logged = [json.loads(line)["step"] for line in
            (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  assert logged == [1, 2, 3, 4, 5, 6]  # both runs' records, none overwritten
  event_files = list((epath.Path(workdir) / "tensorboard").iterdir())
  assert len(event_files) == 2 and all(f.stat().length > 0 for f in event_files)


def test_gradient_accumulation_makes_the_same_updates(straight_run, tmp_path):
  mesh = {"mesh.ici_data": 2, "mesh.ici_fsdp": 2, "mesh.ici_tensor": 2}
  config = make_config(**mesh, **{"optimizer.grad_accum_steps": 2})
  accumulated = losses(run_steps(config, str(tmp_path), data(config)))
  # Two micro-batches of 4 rows sum in another order than one batch of 8.
  np.testing.assert_allclose(accumulated, straight_run, rtol=2e-6)


def test_micro_batches_that_do_not_split_over_the_mesh_are_refused(tmp_path):
  config = make_config(**{"optimizer.grad_accum_steps": 2})  # 4 rows, 8 batch shards
  with pytest.raises(ValueError, match=r"global_batch_size=8 / optimizer.grad_accum_steps=2 "
                     r"micro-batches is not divisible by the 8 batch shards.*multiple of 16"):
    run_steps(config, str(tmp_path), iter([]))


def advanced(config, batches):
  """The data iterator after `batches` batches, as in the straight run."""
  iterator = data(config)
  for _ in range(batches):
    next(iterator)
  return iterator


@pytest.fixture(scope="module")
def step_3_checkpoint(tmp_path_factory):
  """The straight run's first half, saved at step 3."""
  workdir = tmp_path_factory.mktemp("source")
  run_steps(make_config(**{"run.steps": 3}), str(workdir), data(make_config()))
  return str(workdir / "checkpoints" / "3")


def test_init_from_continues_the_full_state(straight_run, step_3_checkpoint, tmp_path):
  config = make_config()
  history = run_steps(config, str(tmp_path), advanced(config, 3), init_from=step_3_checkpoint)
  assert [h["step"] for h in history] == [4, 5, 6]  # step and optimizer state kept
  assert losses(history) == straight_run[3:]


def test_init_params_from_takes_parameters_only_and_writes_a_profile(
    straight_run, step_3_checkpoint, tmp_path):
  config = make_config(**{"run.steps": 3})
  history = run_steps(config, str(tmp_path), advanced(config, 3),
                      init_params_from=step_3_checkpoint, profile_steps=(2, 2))
  assert [h["step"] for h in history] == [1, 2, 3]  # a fresh optimizer, from step 0
  assert history[0]["loss"] == straight_run[3]  # the source's parameters
  assert history[1]["loss"] != straight_run[4]  # updated by a fresh optimizer
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_a_missing_bucket_is_named_and_not_created(gcs_bucket):
  import gcsfs
  with pytest.raises(ValueError, match="gs://no-such-bucket/run: the bucket "
                     "gs://no-such-bucket does not exist"):
    run_steps(make_config(), "gs://no-such-bucket/run", iter([]))
  storage = gcsfs.GCSFileSystem(token="anon")
  storage.invalidate_cache()
  assert "no-such-bucket/" not in storage.ls("")


def test_keep_policy(tmp_path):
  config = make_config(**{"checkpoint.save_every_steps": 1, "checkpoint.max_to_keep": 2,
                          "checkpoint.keep_period": 4})
  run_steps(config, str(tmp_path), data(config))
  kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == [4, 5, 6]  # the last two, and every 4th


def test_sigterm_saves_at_the_next_step_boundary(straight_run, tmp_path):
  config = make_config()

  def preempt(i, batch):
    if i == 2:  # while step 3 is being prepared
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  history = run_steps(config, str(tmp_path), Hooked(data(config), preempt),
                      stop=StopFlag().install())
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  assert [h["step"] for h in history] == [1, 2, 3]
  assert (tmp_path / "checkpoints" / "3").exists()
  resumed = run_steps(config, str(tmp_path), data(config))
  assert losses(history) + losses(resumed) == straight_run


def test_non_finite_loss_halts_and_keeps_the_last_good_checkpoint(tmp_path):
  config = make_config(**{"checkpoint.save_every_steps": 1})

  def poison(i, batch):
    if i == 2:  # token ids past the vocabulary embed as NaN
      return {**batch, "tokens": np.full_like(batch["tokens"], config.model.vocab_size)}
    return batch

  with pytest.raises(NonFiniteLossError, match="step 3: non-finite"):
    run_steps(config, str(tmp_path), Hooked(data(config), poison))
  steps = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == ["1", "2"]


def test_unwritable_workdir_is_named(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="is not a writable directory"):
    run_steps(make_config(), str(blocker / "run"), iter([]))


def _train_command(workdir, *extra, steps=3):
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "run.steps": steps}.items()]
  return [sys.executable, "-m", "trainer.train", f"--config={ROOT}/configs/smoke.py",
          f"--workdir={workdir}", *flags, *extra]


def _logged_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def _run(workdir, processes, steps, tmp_path):
  """The real command on 1 process of 8 CPU devices, or on `processes` of one
  device each (2 gloo ranks connect in a second, 8 take several); runs of the
  same program share compiled steps through a persistent XLA cache."""
  command = _train_command(workdir, "--config.mesh.ici_fsdp=2", steps=steps)
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # with the session's compilation cache
  if processes == 1:
    env["XLA_FLAGS"] = xla_flags(8)
    return subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True,
                          text=True)
  else:
    subprocess.run([sys.executable, "-m", "launch.local", f"--num_processes={processes}",
                    "--devices_per_process=1",
                    f"--log_dir={tmp_path / 'logs' / os.path.basename(workdir)}", "--",
                    *command], env=env, cwd=ROOT, check=True)


def _resume_in_process(workdir, steps):
  """What `_run(workdir, 1, steps)` does, in this process (its 8 devices): the
  same config (configs/smoke.py under OVERRIDES), without a second JAX start.
  Returns the history of the steps trained."""
  from configs import smoke
  from trainer.train_lib import make_train_iterator
  config = make_config(defaults=smoke.get_config(), **{"run.steps": steps, "mesh.ici_fsdp": 2})
  return run_steps(config, workdir, make_train_iterator(config))


def test_entry_point_pinned_losses_and_any_process_count_resumes_it(tmp_path, caplog):
  """The command on 1 process x 8 devices trains 3 steps; its checkpoint
  resumes to step 5 on 2 processes of 1 device (no --init_from) exactly as
  it resumes in this process. (tests/test_reliability.py moves a checkpoint
  from 8 devices to 4 in one process.)"""
  one, one_to_two = str(tmp_path / "one"), str(tmp_path / "one_to_two")
  done = _run(one, 1, 3, tmp_path)
  # If a change is meant to alter numerics, update from the failure message.
  np.testing.assert_allclose(_logged_losses(one), [5.725722, 5.645171, 4.626957], rtol=1e-6)
  # What the person running it reads: progress lines, no library INFO lines.
  lines = done.stdout.splitlines()
  assert lines[0] == "process 0 of 1, 8 local devices of 8" and "MFU is not reported" in lines[1]
  assert lines[2].startswith("step 1/3 | loss 5.7257 | ETA ")
  assert lines[-1] == "trained to step 3: loss 4.6270", done.stdout
  assert f"checkpoint: saving step 3 to {one}/checkpoints/3" in lines
  assert not [line for line in done.stderr.splitlines() if line[:1] in "ID"], done.stderr
  with caplog.at_level(logging.WARNING):  # finished: says so, trains nothing
    assert _resume_in_process(one, 3) == []
  assert "nothing to train: " in caplog.text and "holds step 3 and run.steps=3" in caplog.text
  shutil.copytree(one, one_to_two)
  _resume_in_process(one, 5)
  _run(one_to_two, 2, 5, tmp_path)
  reference = _logged_losses(one)
  assert len(reference) == 5
  # gloo's cross-process sums round differently from in-process ones.
  np.testing.assert_allclose(_logged_losses(one_to_two), reference, rtol=1e-6)
  position = {w: json.loads(open(os.path.join(w, "checkpoints", "5", "data", "metadata")).read())
              for w in (one, one_to_two)}
  assert position[one]["rows"] == 5 * 8 and position[one_to_two] == position[one]
