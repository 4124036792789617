"""The local checkpoint tier (trainer/local_tier.py): a run of 2 processes
of one CPU device each (ZeRO-3: every array sharded over both, no replica) loses one process's
local storage and resumes from the local tier, that process's shards fetched
back from the next host's copy, and saves again the steps it trains anew;
with every local tier lost it resumes from the --workdir tier. (A local --workdir: the gs:// tier's restore is the
same code, tested in tests/test_trainer.py.)"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.test_reliability import OVERRIDES, ROOT
from trainer import config as config_lib
from trainer.checkpoint import local_root
from trainer.local_tier import Holdings


def test_a_step_is_complete_when_every_process_has_it_or_its_copy():
  # peer[i] holds process i-1's steps: process 1 lost its own, and its copy
  # lives on process (1 + 1) % 2 = 0.
  lost_one = Holdings(own=[[3, 5], []], peer=[[3, 5], [3]])
  assert lost_one.complete() == [3, 5]
  # Process 0 has only 5, process 1 only 3 (through its copy): nothing is whole.
  assert Holdings(own=[[5], []], peer=[[3], [5]]).complete() == []
  assert Holdings(own=[[2, 4]], peer=[[]]).complete() == [2, 4]  # one process, no copy


@pytest.mark.parametrize("overrides, message", [
    ({"checkpoint.local_dir": "/dev/shm/x"},
     "checkpoint.local_dir='/dev/shm/x' and checkpoint.local_every_steps=0 go together"),
    ({"checkpoint.local_every_steps": 5},
     "checkpoint.local_dir='' and checkpoint.local_every_steps=5 go together"),
    ({"checkpoint.local_dir": "gs://b/x", "checkpoint.local_every_steps": 5},
     "checkpoint.local_dir=gs://b/x must be host-local"),
])
def test_bad_local_tier_settings_are_named(overrides, message):
  values = config_lib.defaults()
  for key, value in overrides.items():
    section, name = key.split(".")
    values[section][name] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.build(values)


def _train(workdir, local_dir, steps: int) -> str:
  """The command on 2 processes of 1 CPU device; returns process 0's log.
  (One device each: 2 gloo ranks connect in a second, 8 take several.)"""
  overrides = {**OVERRIDES, "run.steps": steps, "checkpoint.save_every_steps": 3,
               "checkpoint.local_every_steps": 1, "checkpoint.local_dir": local_dir,
               "mesh.ici_data": 1, "mesh.ici_fsdp": -1}
  logs = os.path.join(workdir, "logs")
  subprocess.run(
      [sys.executable, "-m", "launch.local", "--num_processes=2", "--devices_per_process=1",
       f"--log_dir={logs}", "--", sys.executable, "-m", "trainer.train",
       f"--config={ROOT}/configs/smoke.py", f"--workdir={workdir}",
       *[f"--config.{k}={v}" for k, v in overrides.items()]],
      cwd=ROOT, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  with open(os.path.join(logs, "process_0.log")) as f:
    return f.read()


def _last_losses(workdir) -> dict[int, float]:
  """Each step's loss, as the last run that trained it logged it."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_a_lost_local_tier_comes_back_from_the_next_host_or_from_the_workdir(tmp_path):
  workdir, local_dir = str(tmp_path / "run"), str(tmp_path / "ram")
  _train(workdir, local_dir, 5)  # saves: local 1, 2, 4; workdir 3 and 5
  straight = _last_losses(workdir)
  run_local = local_root(local_dir, workdir)
  assert sorted(os.listdir(f"{run_local}/process_1/own")) == ["2", "4"]
  assert sorted(os.listdir(f"{run_local}/process_0/peer")) == ["2", "4", "p2p_restore"]

  # Process 1's host is replaced (its local disk is empty), process 0's copy
  # of its step 4 never arrived, and the workdir's steps were never
  # committed: the newest complete step is local step 2, process 1's shards
  # fetched back from process 0's copy. Process 0's own step 4 is stale: the
  # run trains step 4 again and saves it locally once more.
  for step in ("3", "5"):
    shutil.rmtree(f"{workdir}/checkpoints/{step}")
  shutil.rmtree(f"{run_local}/process_1")
  shutil.rmtree(f"{run_local}/process_0/peer/4")
  log = _train(workdir, local_dir, 5)
  assert f"resuming from local step 2 ({run_local}/process_0)" in log
  # The copies' polls for steps not saved yet log nothing (Orbax logs two errors each).
  assert "Failed to get manifest" not in log and "Step directory not found" not in log
  assert "processes [1] had lost their local step: fetched back" in log
  assert sorted(d for d in os.listdir(f"{run_local}/process_1/own") if d.isdigit()) == ["2", "4"]
  # The restored state passed its checksums; its next steps are the same.
  # (gloo's cross-process sums may round differently after other collectives.)
  np.testing.assert_allclose(_last_losses(workdir)[5], straight[5], rtol=1e-6)

  # Every host replaced: the workdir's step 3.
  shutil.rmtree(f"{workdir}/checkpoints/5")
  shutil.rmtree(run_local)
  log = _train(workdir, local_dir, 5)  # the same program: the compilation cache has it
  assert f"resuming from {workdir}/checkpoints/3" in log and "local step" not in log
  resumed = _last_losses(workdir)
  np.testing.assert_allclose([resumed[4], resumed[5]], [straight[4], straight[5]], rtol=1e-6)
