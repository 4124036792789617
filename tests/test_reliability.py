"""Reliability, CI-sized (drills/ runs the full drills; both are in
docs/reliability.md; kills and SIGTERM are tests/test_preemption.py's): a NaN
update is skipped, counted and resumed exactly; storage that goes away during a save, refuses a commit or fills up
is named and loses nothing committed; a checkpoint of 8 devices continues on
4; damaged checkpoints and wrong paths are named before anything compiles."""

import json
import os
import pathlib
import resource
import shutil
import threading
import time

import jax
import numpy as np
import pytest
from etils import epath

from tests import test_trainer
from trainer import config as config_lib
from trainer.checkpoint import CheckpointSaveError, committed_steps
from trainer.metrics import read_records as records
from trainer.import_recurrentgemma_lib import read_as_numpy
from trainer.train_lib import make_train_iterator
from trainer.train import parse_profile_steps
from trainer.spikes import LossSpikeError, SpikeGuard
from trainer.train_loop import NonFiniteLossError, run_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A model whose compile, save and restore take seconds; configs/smoke.py
# with these overrides is the same config through the command line.
OVERRIDES = {"data.dataset": "stdlib_bytes", "model.vocab_size": 256, "data.seq_len": 16,
             "data.global_batch_size": 8, "model.block_pattern": "R", "model.depth": 1,
             "model.width": 32, "model.lru_width": 32, "model.head_dim": 16,
             "model.gate_blocks": 2, "optimizer.warmup_steps": 1, "run.steps": 4,
             "run.log_every_steps": 1, "run.eval_every_steps": 0, "run.eval_steps": 10,
             "checkpoint.save_every_steps": 2, "run.on_non_finite": "skip"}
CURVE = ("loss", "grad_norm", "skipped", "skipped_steps")  # what must match bit for bit
# After a failed save, Orbax's asyncio callbacks find their event loop closed
# ("Event loop is closed", raised where nothing can catch it, reported later).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def make_config(**overrides):
  return test_trainer.make_config(OVERRIDES, **overrides)


class Hooked(test_trainer.Hooked):
  """test_trainer's hooked iterator, restorable in place too (Grain starts
  the prefetch of an iterator it restored)."""

  def start_prefetch(self):
    getattr(self.iterator, "start_prefetch", lambda: None)()


def poison_at(*indices):
  """A hook that makes the given batches (0 = step 1) non-finite: token ids
  past the vocabulary embed as NaN."""
  def poison(i, batch):
    if i in indices:
      return {**batch, "tokens": np.full_like(batch["tokens"], OVERRIDES["model.vocab_size"])}
    return batch
  return poison


def assert_same_curve(got: list[dict], want: list[dict], keys=CURVE):
  """Equal bit for bit (NaN equals NaN: a skipped step logs its NaN loss)."""
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for key in keys:
    np.testing.assert_array_equal([r.get(key) for r in got], [r.get(key) for r in want],
                                  err_msg=key)


def copy_until(workdir, step: int, target) -> str:
  """A copy of a finished run as it was when `step` was its last committed
  step: later checkpoints and records removed."""
  shutil.copytree(workdir, target)
  for path in (target / "checkpoints").iterdir():
    if path.name.isdigit() and int(path.name) > step:
      shutil.rmtree(path)
  kept = [line for line in (target / "metrics.jsonl").read_text().splitlines()
          if json.loads(line)["step"] <= step]
  (target / "metrics.jsonl").write_text("\n".join(kept) + "\n")
  return str(target)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """4 steps on 8 devices, skip policy, step 2's batch made NaN, a checkpoint
  every step: the reference the other tests resume from and compare to."""
  config = make_config(**{"checkpoint.save_every_steps": 1, "checkpoint.max_to_keep": 10})
  workdir = tmp_path_factory.mktemp("source")
  history = run_steps(config, str(workdir), Hooked(make_train_iterator(config), poison_at(1)))
  return workdir, history


# --- NaN and Inf ------------------------------------------------------------


def test_a_non_finite_update_is_skipped_counted_and_resumed_exactly(source_run, tmp_path):
  workdir, history = source_run
  assert [h["skipped"] for h in history] == [0, 1, 0, 0]
  assert [h["skipped_steps"] for h in history] == [0, 1, 1, 1]
  assert np.isnan(history[1]["loss"]) and np.isfinite(history[2]["loss"])
  # The skipped step changed nothing but the step counter.
  one, two = (read_as_numpy(str(workdir / "checkpoints" / str(s) / "state")) for s in (1, 2))
  assert (int(one["step"]), int(two["step"])) == (1, 2)
  for part in ("params", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, one[part], two[part])
  saved = json.loads((workdir / "checkpoints" / "2" / "counters" / "metadata").read_text())
  assert saved == {"skipped_steps": 1}
  # Resumed from step 2 with a limit of 1: step 3 is the straight run's, with
  # the count carried over; a NaN at step 4 is one skip too many.
  resumed = copy_until(workdir, 2, tmp_path / "resumed")
  config = make_config(**{"checkpoint.save_every_steps": 1, "run.max_skipped_steps": 1})
  with pytest.raises(NonFiniteLossError, match=r"step 4: .* 2 steps were skipped, more than "
                     r"run.max_skipped_steps=1; the last committed checkpoint is 3"):
    run_steps(config, resumed, Hooked(make_train_iterator(config), poison_at(1)))
  assert_same_curve([r[-1] for r in records(resumed).values()], history[:3])
  assert committed_steps(epath.Path(resumed) / "checkpoints") == [1, 2, 3]


# --- loss spikes ------------------------------------------------------------


def test_a_spike_is_skipped_or_rolled_back_past_its_batch(tmp_path):
  """Step 4's batch is one token repeated (finite loss, gradient norm over
  10x the median). `skip` drops its update in the compiled step; `rollback`
  restores step 3 and goes on with the batch after it. Either way the model
  never learns from that batch: the rollback run's steps 4 and 5 are the skip
  run's 5 and 6, bit for bit (the skipped step kept the optimizer's count
  too), and the event is counted and saved with the run."""
  def spike_at_4(i, batch):
    return {**batch, "tokens": np.full_like(batch["tokens"], 255)} if i == 3 else batch

  runs = {}
  for action in ("skip", "rollback"):
    # Rolling back needs step 3 saved; a save every step also reads each
    # step's metrics before the next is dispatched (one batch skipped).
    config = make_config(**{"run.steps": 6, "run.spike_factor": 1.5,
                            "run.spike_window": 2, "run.spike_action": action,
                            "checkpoint.save_every_steps": 1 if action == "rollback" else 6})
    workdir = tmp_path / action
    runs[action] = run_steps(config, str(workdir), Hooked(make_train_iterator(config), spike_at_4))
    saved = json.loads((workdir / "checkpoints" / "6" / "counters" / "metadata").read_text())
    assert saved["spikes"] == 1
  skip, rolled = runs["skip"], runs["rollback"]
  assert [r["spike"] for r in skip] == [0, 0, 0, 1, 0, 0]
  assert skip[3]["grad_norm"] > 10 * np.median([r["grad_norm"] for r in skip[:3]])
  assert [r["step"] for r in rolled] == list(range(1, 7))  # the spike's record is not kept
  assert_same_curve(rolled[:3], skip[:3], keys=("loss", "grad_norm"))
  np.testing.assert_array_equal([(r["loss"], r["grad_norm"]) for r in rolled[3:5]],
                                [(r["loss"], r["grad_norm"]) for r in skip[4:6]])
  saved = json.loads((tmp_path / "rollback" / "checkpoints" / "6" / "counters" / "metadata")
                     .read_text())
  assert saved["rollbacks"] == [{"at": 4, "to": 3, "batches_skipped": 1}]
  assert rolled[-1]["spikes"] == 1


def test_spike_limits_use_the_steps_two_back_so_a_resumed_run_agrees():
  guard = SpikeGuard(factor=2.0, window=3)
  for step, loss in enumerate([4.0, 6.0, 5.0, 9.0], start=1):
    guard.accept(step, {"loss": loss, "grad_norm": 1.0})
  assert np.isinf(guard.limits(4)).all()  # steps 1 and 2 only: the window is not full
  np.testing.assert_array_equal(guard.limits(5), [10.0, 2.0])  # median of 4, 6, 5
  np.testing.assert_array_equal(guard.limits(6), [12.0, 2.0])  # of 6, 5, 9
  resumed = SpikeGuard(2.0, 3, json.loads(json.dumps(guard.counters())))
  assert [resumed.limits(s).tolist() for s in (5, 6)] == [guard.limits(s).tolist() for s in (5, 6)]
  assert guard.is_spike(6, {"loss": 12.5, "grad_norm": 1.0})
  assert not guard.is_spike(6, {"loss": float("nan"), "grad_norm": 1.0})  # non-finite: not a spike
  # Rolling back, the loop's limits decide; one spike more than max_spikes stops the run.
  assert guard.observe(6, {"loss": 12.5, "grad_norm": 1.0}, True, 1, lambda: 5)
  with pytest.raises(LossSpikeError, match=r"step 7: a loss spike .* 2 spikes, more than "
                     r"run.max_spikes=1: the run is diverging. The last committed checkpoint, "
                     r"before the spikes' updates, is 5"):
    guard.observe(7, {"loss": 99.0, "grad_norm": 1.0}, True, 1, lambda: 5)


# --- storage ----------------------------------------------------------------


def test_storage_outage_mid_save_then_a_refused_commit_on_gcs(source_run, healthy_gcs,
                                                              gcs_bucket):
  """The emulator is stopped before step 2's save and back 2 s later: the
  clients' retries carry the save through. Step 4's commit marker is then
  refused (403): a clear error, step 4 is not listed though its arrays were
  written, and the next run resumes from step 2 and matches bit for bit."""
  _, history = source_run
  workdir = f"{gcs_bucket}/outage"
  config = make_config(**{"checkpoint.use_ocdbt": False})
  poison = poison_at(1)

  def faults(i, batch):
    if i == 1:  # the batch of step 2, before its save
      healthy_gcs.stop()
      threading.Timer(2.0, healthy_gcs.start).start()
    if i == 3:  # the batch of step 4
      healthy_gcs.fail(403, "checkpoints/4/commit_success")
    return poison(i, batch)

  with pytest.raises(CheckpointSaveError) as error:
    run_steps(config, workdir, Hooked(make_train_iterator(config), faults))
  message = str(error.value)
  assert f"checkpoint step 4 was not saved to {workdir}/checkpoints/4" in message
  assert "Forbidden" in message and "the last committed step is 2" in message
  healthy_gcs.fail(None)
  checkpoints = epath.Path(workdir) / "checkpoints"
  assert (checkpoints / "4" / "state").exists()  # written, but never committed
  assert committed_steps(checkpoints) == [2]
  resumed = run_steps(config, workdir, make_train_iterator(config))
  assert [h["step"] for h in resumed] == [3, 4]
  assert committed_steps(checkpoints) == [2, 4]
  assert_same_curve([r[-1] for r in records(workdir).values()], history)


def test_a_failing_disk_at_save_is_named_and_keeps_the_previous_step(source_run, tmp_path):
  """The disk refuses the checkpoint's writes once step 2 is committed: a
  file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past it
  fails with EFBIG), which needs no root and no mount. drills/
  fills a real tmpfs (ENOSPC) and makes a directory immutable (EPERM)."""
  workdir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
  config = make_config()
  poison = poison_at(1)
  unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)

  def fail_disk(i, batch):
    if i == 2:  # step 2's save is under way: let it commit, then limit file sizes
      deadline = time.monotonic() + 60
      while 2 not in committed_steps(checkpoints) and time.monotonic() < deadline:
        time.sleep(0.05)
      # Room for metrics.jsonl (< 2 KB), none for the arrays (> 30 KB).
      resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, unlimited[1]))
    return poison(i, batch)

  try:
    with pytest.raises(CheckpointSaveError) as error:
      run_steps(config, str(workdir), Hooked(make_train_iterator(config), fail_disk))
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, unlimited)
  message = str(error.value)
  assert f"checkpoint step 4 was not saved to {checkpoints}/4" in message
  assert "File too large" in message and "the last committed step is 2" in message
  assert committed_steps(checkpoints) == [2]
  kept = read_as_numpy(str(checkpoints / "2" / "state"))
  straight = read_as_numpy(str(source_run[0] / "checkpoints" / "2" / "state"))
  jax.tree.map(np.testing.assert_array_equal, kept, straight)
  # With the disk healthy again the same command resumes from step 2, exactly.
  resumed = run_steps(config, str(workdir), make_train_iterator(config))
  assert [h["step"] for h in resumed] == [3, 4]
  assert_same_curve([r[-1] for r in records(workdir).values()], source_run[1])


def test_a_checkpoint_of_8_devices_continues_on_4(source_run, tmp_path):
  from tests.test_preemption import Run  # the command line, as in the kill drills
  """The same data position exactly; the losses as close as a 4-way instead
  of an 8-way sum rounds."""
  workdir, history = source_run
  resumed = copy_until(workdir, 2, tmp_path / "four")
  run = Run(resumed, devices=4)
  assert run.finish() == 0, run.log()
  assert "8 local devices" not in run.log() and "4 local devices of 4" in run.log()
  got = [r[-1] for r in records(resumed).values()]
  assert [r["step"] for r in got] == [1, 2, 3, 4]
  np.testing.assert_allclose([r["loss"] for r in got[2:]], [h["loss"] for h in history[2:]],
                             rtol=1e-6)
  assert [r["skipped_steps"] for r in got[2:]] == [1, 1]  # the count came along
  position = "checkpoints/4/data/metadata"
  assert (json.loads((epath.Path(resumed) / position).read_text())
          == json.loads((workdir / position).read_text()))


# --- bad input: named before anything compiles -------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"model.block_pattern": "A"}, r"params/groups/blocks/0/temporal/k/value is missing from the "
                                   r"checkpoint; was it saved by another architecture"),
    ({"model.width": 64, "model.lru_width": 64},
     r"embedder/embedding/value has shape \(256, 32\) in the checkpoint but \(256, 64\)"),
], ids=["another_block_pattern", "another_width"])
def test_resuming_another_architecture_is_named(source_run, tmp_path, overrides, message):
  workdir = copy_until(source_run[0], 4, tmp_path / "run")
  with pytest.raises(ValueError, match=message):  # one step more: a finished run trains nothing
    run_steps(make_config(**overrides, **{"run.steps": 5}), workdir, iter([]))


def _truncate_array_files(step_dir):
  """Halves every array data file (OCDBT keeps them in `d/` directories)."""
  files = [p for p in pathlib.Path(step_dir, "state").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  assert files
  for path in files:
    os.truncate(path, path.stat().st_size // 2)


def flip_bytes(step_dir, count: int = 64):
  """Inverts `count` bytes in the middle of the largest array data file: a
  file of the right size whose contents changed (bit rot, a bad copy)."""
  files = [p for p in pathlib.Path(step_dir, "state").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  path = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (_truncate_array_files, "cannot be read: .*It is damaged"),
    (flip_bytes, "does not match its checksum .* the stored bytes changed after the save"),
    (lambda step_dir: shutil.rmtree(step_dir / "state"), "state is missing"),
    (lambda step_dir: (step_dir / "state" / "_METADATA").unlink(), "state/_METADATA is missing"),
    (lambda step_dir: shutil.rmtree(step_dir / "data"), "data is missing"),
    (lambda step_dir: (step_dir / "data" / "metadata").write_text("{garbage"),
     r"checkpoints/4/data: JSONDecodeError"),
    (lambda step_dir: shutil.rmtree(step_dir / "config"), "config is missing"),
], ids=["truncated_array_files", "flipped_bytes", "no_state", "no_tree_metadata",
        "no_data_position", "garbage_data_position", "no_config"])
def test_a_damaged_checkpoint_is_named_with_what_would_work(source_run, tmp_path, damage,
                                                            message):
  workdir = copy_until(source_run[0], 4, tmp_path / "run")
  damage(pathlib.Path(workdir) / "checkpoints" / "4")
  config = make_config(**{"run.steps": 5})  # one step more: a finished run trains nothing
  with pytest.raises(ValueError, match=message) as error:
    run_steps(config, workdir, make_train_iterator(config))
  assert f"delete {workdir}/checkpoints/4 to resume from step 3" in str(error.value)
  assert "checkpoint.on_corrupt=fallback" in str(error.value)
  assert "tensorstore_spec" not in str(error.value) and len(str(error.value)) < 1000


def test_a_corrupt_step_is_set_aside_and_the_run_resumes_from_the_one_before(source_run,
                                                                            tmp_path):
  """checkpoint.on_corrupt=fallback: step 4's flipped bytes fail its checksum;
  it is moved aside and the run resumes from step 3, retraining step 4 bit
  for bit as the straight run did."""
  workdir = copy_until(source_run[0], 4, tmp_path / "run")
  flip_bytes(pathlib.Path(workdir) / "checkpoints" / "4")
  config = make_config(**{"checkpoint.on_corrupt": "fallback", "checkpoint.max_to_keep": 10,
                          "checkpoint.save_every_steps": 1, "run.steps": 5})
  resumed = run_steps(config, workdir, make_train_iterator(config))
  assert [h["step"] for h in resumed] == [4, 5]
  assert_same_curve(resumed[:1], source_run[1][3:])
  checkpoints = pathlib.Path(workdir) / "checkpoints"
  assert committed_steps(checkpoints) == [1, 2, 3, 4, 5]
  assert [p.name.split("-")[0] for p in checkpoints.glob("4.corrupt-*")] == ["4.corrupt"]


def test_init_paths_that_are_not_step_directories_are_named(source_run, tmp_path):
  workdir = source_run[0]
  with pytest.raises(ValueError, match=r"--init_from=.*/checkpoints/7 is not a checkpoint step "
                     r"directory .*the step directories in .*checkpoints: \[1, 2, 3, 4\]"):
    run_steps(make_config(), str(tmp_path), iter([]),
              init_from=str(workdir / "checkpoints" / "7"))
  with pytest.raises(ValueError, match=r"--init_params_from=.* is not a checkpoint step "
                     r"directory \(no state/ in it\); give <workdir>/checkpoints/<step>"):
    run_steps(make_config(), str(tmp_path), iter([]), init_params_from=str(workdir))


@pytest.mark.parametrize("section, field, value, valid", [
    ("run", "on_non_finite", "sometimes", r"not one of \['halt', 'skip'\]"),
    ("run", "max_skipped_steps", -1, "an integer >= 0"),
    ("checkpoint", "preemption_grace_s", 0.0, "seconds > 0"),
    ("checkpoint", "preemption_grace_s", float("nan"), "seconds > 0"),
    ("checkpoint", "on_corrupt", "ignore", r"not one of \['refuse', 'fallback'\]"),
    ("run", "spike_factor", 1.0, r"must be 0 \(off\) or a number > 1"),
    ("run", "spike_window", 0, "a positive integer"),
    ("run", "spike_action", "restart", r"not one of \['skip', 'rollback'\]"),
], ids=["run.on_non_finite=sometimes", "run.max_skipped_steps=-1",
        "checkpoint.preemption_grace_s=0", "checkpoint.preemption_grace_s=nan",
        "checkpoint.on_corrupt=ignore", "run.spike_factor=1", "run.spike_window=0",
        "run.spike_action=restart"])
def test_bad_reliability_settings_are_named(section, field, value, valid):
  cd = config_lib.defaults()
  cd[section][field] = value
  with pytest.raises(ValueError, match=rf"{section}.{field}={value!r} .*{valid}"):
    config_lib.build(cd)


@pytest.mark.parametrize("values", [["0", "2"], ["3", "2"], ["2"], ["a", "b"], ["1", "9"]],
                         ids=",".join)
def test_bad_profile_steps_are_named(values):
  with pytest.raises(ValueError, match=rf"--profile_steps={','.join(values)} must be "
                     r"START,STOP with 1 <= START <= STOP <= run.steps=4"):
    parse_profile_steps(values, 4)
