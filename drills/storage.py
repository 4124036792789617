"""Storage faults: GCS outages, denied writes, slow storage at preemption; a
full local disk and a read-only one."""

import os
import subprocess
import sys
import threading
import time

from drills.harness import (Drill, ROOT, Run, SAVE_STARTED, committed, final_error,
                                       same_curve)


# --- storage: GCS outage, denied writes, slow storage at preemption ------------


def storage_drill(d: Drill, outage_limit_s: int):
  sys.path.insert(0, ROOT)
  from tests.gcs_emulator import GcsEmulator  # the test suite's, with fault injection

  reference = d.uninterrupted()
  emulator = GcsEmulator(d.path("gcs")).start()
  try:
    storage_trials(d, emulator, reference, outage_limit_s)
  finally:
    emulator.stop()


def storage_trials(d: Drill, emulator, reference: str, outage_limit_s: int):
  os.environ.update(emulator.env)
  bucket = emulator.make_bucket("drills")
  gcs = dict(env=emulator.env, **{"checkpoint.use_ocdbt": False})

  def restart_after(seconds):
    timer = threading.Timer(seconds, emulator.start)
    timer.start()
    return timer

  # Short outages: stopped as a save starts, back after 5 s and 20 s.
  for seconds in (5, 20):
    t0, workdir = time.monotonic(), f"{bucket}/outage_{seconds}s"
    run = Run(workdir, d.out, **gcs)
    run.wait_for(SAVE_STARTED.replace(r"(\d+)", "8"))
    emulator.stop()
    restart_after(seconds).join()
    code = run.finish()
    differs = same_curve(workdir, reference)
    d.row(f"storage: GCS emulator stopped as step 8's save starts, back after {seconds} s",
          1, code == 0 and not differs,
          f"the clients' retries (tensorstore, gcsfs) carried the save through; exit {code}; "
          f"curve {'differs: ' + differs if differs else 'equal bit for bit'}", t0)

  # A long outage: stopped as a save starts, not back until the run gives up.
  t0, workdir = time.monotonic(), f"{bucket}/outage_long"
  run = Run(workdir, d.out, **gcs)
  run.wait_for(SAVE_STARTED.replace(r"(\d+)", "8"))
  emulator.stop()
  down = time.monotonic()
  try:
    code = run.finish(timeout=outage_limit_s)
  except subprocess.TimeoutExpired:
    run.kill()
    code = None
  gave_up = time.monotonic() - down
  emulator.start()
  error = final_error(run)
  kept = committed(workdir)
  resumed = Run(workdir, d.out, **gcs)
  resumed_code = resumed.finish()
  differs = same_curve(workdir, reference)
  d.row("storage: GCS emulator stopped as step 8's save starts, back only after the run "
        "gave up", 1, code not in (0, None) and bool(error) and 8 not in kept
        and resumed_code == 0 and not differs,
        f"exit {code} {gave_up:.0f} s into the outage: '{error[:240]}...'"
        + f"; committed {kept}; with storage back the rerun resumed from "
        f"{resumed.resumed_from()} and its curve is "
        f"{'different: ' + differs if differs else 'equal bit for bit'}", t0)

  # Permission denied: every checkpoint write refused with 403 from step 12 on.
  t0, workdir = time.monotonic(), f"{bucket}/denied"
  run = Run(workdir, d.out, **gcs)
  run.wait_for(r"step 10/")
  emulator.fail(403, "denied/checkpoints/")
  code = run.finish()
  emulator.fail(None)
  error = final_error(run)
  kept = committed(workdir)
  resumed = Run(workdir, d.out, **gcs)
  resumed_code = resumed.finish()
  differs = same_curve(workdir, reference)
  d.row("storage: GCS answers 403 to checkpoint writes mid-run", 1,
        code != 0 and "CheckpointSaveError" in error and resumed_code == 0 and not differs,
        f"exit {code}: '{error[:240]}...'"
        + f"; committed {kept}; after the fault the rerun resumed from "
        f"{resumed.resumed_from()}, curve {'differs' if differs else 'equal bit for bit'}",
        t0)

  # Preemption while storage hangs (503 on checkpoint writes, retried): out of grace.
  t0, workdir = time.monotonic(), f"{bucket}/slow_preemption"
  run = Run(workdir, d.out, **gcs, **{"checkpoint.preemption_grace_s": 5.0})
  run.wait_for(r"step 10/")
  emulator.fail(503, "slow_preemption/checkpoints/")
  signal_time = time.monotonic()
  run.process.terminate()
  code = run.finish()
  exit_s = time.monotonic() - signal_time
  emulator.fail(None)
  kept = committed(workdir)
  resumed = Run(workdir, d.out, **gcs)
  resumed_code = resumed.finish()
  differs = same_curve(workdir, reference)
  d.row("preemption: SIGTERM while GCS answers 503 to checkpoint writes (grace 5 s)", 1,
        code == 1 and "did not commit" in run.log() and resumed_code == 0 and not differs,
        f"exit {code} {exit_s:.1f} s after the signal, 'did not commit ... within "
        f"checkpoint.preemption_grace_s=5.0 s'; committed {kept}; the rerun resumed from "
        f"{resumed.resumed_from()}, curve {'differs' if differs else 'equal bit for bit'}",
        t0)


# --- a full local disk (a size-limited tmpfs), a denied one (ext4, chattr +i) --


def disk_drill(d: Drill):
  started = time.monotonic()
  reference = d.uninterrupted()
  disk = d.path("disk")
  os.makedirs(disk, exist_ok=True)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", disk],
                           capture_output=True, text=True)
  if mounted.returncode:
    d.row("disk full", 0, True, f"skipped: no tmpfs ({mounted.stderr.strip()})", started)
    return
  try:
    # Full: checkpoints accumulate (max_to_keep=100) until one does not fit.
    workdir = os.path.join(disk, "full")
    run = Run(workdir, d.out, **{"checkpoint.max_to_keep": 100})
    code = run.finish()
    error = final_error(run)
    kept = committed(workdir)
    subprocess.run(["mount", "-o", "remount,size=64m", disk], check=True)
    resumed = Run(workdir, d.out, **{"checkpoint.max_to_keep": 100})
    resumed_code = resumed.finish()
    differs = same_curve(workdir, reference)
    d.row("disk full (a 5 MB tmpfs) at save time", 1,
          code != 0 and bool(error) and resumed_code == 0 and not differs,
          f"exit {code}: '{error[:240]}...'"
          + f"; committed {kept[:2]}...{kept[-2:]}; with room again (remount 64 MB) the "
          f"rerun resumed from {resumed.resumed_from()}, curve "
          f"{'differs' if differs else 'equal bit for bit'}", started)

  finally:
    subprocess.run(["umount", "-l", disk], check=False)
  # Permission denied: root passes any mode bits, but not an immutable
  # directory (chattr +i, ext4 in a loop file): step 12's save cannot start.
  t0, image, mounted_at = time.monotonic(), d.path("ext4.img"), d.path("ext4")
  os.makedirs(mounted_at)
  with open(image, "wb") as f:
    f.truncate(64 << 20)
  made = subprocess.run(f"mkfs.ext4 -q {image} && mount -o loop {image} {mounted_at}",
                        shell=True, capture_output=True, text=True)
  if made.returncode:
    d.row("permission denied at save time", 0, True,
          f"skipped: no ext4 loop mount ({made.stderr.strip()})", t0)
    return
  try:
    workdir = os.path.join(mounted_at, "denied")
    run = Run(workdir, d.out)
    run.wait_for(r"step 10/")
    subprocess.run(["chattr", "+i", os.path.join(workdir, "checkpoints")], check=True)
    code = run.finish()
    subprocess.run(["chattr", "-i", os.path.join(workdir, "checkpoints")], check=True)
    error = final_error(run)
    kept = committed(workdir)
    resumed = Run(workdir, d.out)
    resumed_code = resumed.finish()
    differs = same_curve(workdir, reference)
    d.row("permission denied at save time (an immutable checkpoints/ on ext4)", 1,
          code != 0 and "CheckpointSaveError" in error and resumed_code == 0 and not differs,
          f"exit {code}: '{error[:240]}...'; committed {kept}; writable again, the rerun "
          f"resumed from {resumed.resumed_from()}, curve "
          f"{'differs' if differs else 'equal bit for bit'}", t0)
  finally:
    subprocess.run(["umount", "-l", mounted_at], check=False)
