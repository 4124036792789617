"""The checkpoint tiers under faults: the local tier through kills and lost
RAM disks (1 and 2 processes), and a corrupt gs://-tier step set aside."""

import glob
import os
import random
import re
import shutil
import subprocess
import time

from drills.harness import SAVE_EVERY, Drill, Run, committed, final_error, same_curve
from drills.topology import two_processes

LOCAL = {"checkpoint.local_every_steps": 1}  # every step that is not a workdir save


def local_steps(local_dir: str, process: int = 0) -> list[int]:
  """The committed local steps of one process (Orbax renames a step's
  temporary directory when it commits)."""
  own = glob.glob(f"{local_dir}/run-*/process_{process}/own/*")
  return sorted(int(os.path.basename(p)) for p in own if os.path.basename(p).isdigit())


def resumed_locally(run: Run) -> int | None:
  match = re.search(r"resuming from local step (\d+)", run.log())
  return int(match.group(1)) if match else None


def kill_after_a_step(run: Run, start: int, rng: random.Random):
  run.wait_for(rf"step {start + rng.randint(1, 2 * SAVE_EVERY)}/")
  time.sleep(rng.uniform(0, 0.5))


def local_tier_drill(d: Drill, kills: int, rng: random.Random):
  """1 process x 8 devices, a local save every step and a workdir save every
  4: SIGKILL at random moments; every restart must resume from the newest
  step of either tier; once, the RAM disk is wiped (a new VM) and the run
  must fall back to the workdir. The final curve equals the uninterrupted
  run's bit for bit."""
  started = time.monotonic()
  reference, chain, ram = d.uninterrupted(), d.path("local"), d.path("local_ram")
  wrong, from_local = [], 0
  for k in range(kills):
    if k == kills - 1:
      shutil.rmtree(ram, ignore_errors=True)  # the last restart finds no local tier
    newest = max([*committed(chain), *local_steps(ram)], default=None)
    run = Run(chain, d.out, **LOCAL, **{"checkpoint.local_dir": ram})
    kill_after_a_step(run, newest or 0, rng)
    run.kill()
    resumed = resumed_locally(run) or run.resumed_from()
    from_local += resumed_locally(run) is not None
    if resumed != newest:
      wrong.append(f"restart {k + 1}: resumed from {resumed}, newest {newest}")
  final = Run(chain, d.out, **LOCAL, **{"checkpoint.local_dir": ram})
  code = final.finish()
  differs = same_curve(chain, reference)
  d.row("local tier: SIGKILL at random moments, a local save every step (1 process); "
        "the RAM disk wiped before the last restart", kills,
        code == 0 and not wrong and not differs and from_local > 0,
        f"{from_local} of the {kills - 2} restarts between the first run and the wipe "
        "resumed from the local tier (the others found a newer workdir step), the one "
        f"after the wipe from the workdir; each from the newest step of either tier "
        f"({len(wrong)} did not"
        f"{': ' + '; '.join(wrong) if wrong else ''}); final curve "
        f"{'differs: ' + differs if differs else 'equal bit for bit'} to the uninterrupted "
        "run's", started)
  two_process_local(d, rng)


def two_process_local(d: Drill, rng: random.Random):
  """2 processes x 4 devices: SIGKILL both, wipe process 1's RAM disk; the
  restart fetches its shards back from process 0's copy. The curve is
  compared with a 2-process run that never stopped."""
  started = time.monotonic()
  reference, chain = d.path("local_2x4_reference"), d.path("local_2x4")
  ram = {"checkpoint.local_dir": d.path("local_2x4_ram")}
  if two_processes(d, reference).finish() != 0:
    raise RuntimeError(f"the 2-process reference failed: {reference}_logs")
  run = two_processes(d, chain, **LOCAL, **ram)
  # Process 0's log is the launcher's log file; wait on the files the steps write.
  deadline = time.monotonic() + 300
  target = SAVE_EVERY + rng.randint(2, SAVE_EVERY - 1)  # between two workdir saves
  while max(local_steps(ram["checkpoint.local_dir"], 1), default=0) < target:
    if time.monotonic() > deadline or run.process.poll() is not None:
      raise RuntimeError(f"local step {target} never appeared: {chain}_logs")
    time.sleep(0.2)
  subprocess.run(["pkill", "-9", "-f", f"workdir={chain}"], check=False)  # the whole job
  run.finish()
  held = local_steps(ram["checkpoint.local_dir"], 0), local_steps(ram["checkpoint.local_dir"], 1)
  shutil.rmtree(glob.glob(f"{ram['checkpoint.local_dir']}/run-*/process_1")[0])
  restart = two_processes(d, chain, **LOCAL, **ram)
  code = restart.finish()
  log = open(f"{chain}_logs/process_0.log").read()
  resumed = re.search(r"resuming from local step (\d+)", log)
  fetched = "processes [1] had lost their local step: fetched back" in log
  differs = same_curve(chain, reference)
  d.row("local tier: 2 processes x 4 devices killed, process 1's RAM disk wiped", 1,
        code == 0 and bool(resumed) and fetched and not differs,
        f"local steps held at the kill (process 0, 1): {held[0][-2:]}, {held[1][-2:]}; "
        f"resumed from local step {resumed.group(1) if resumed else None} with process 1's "
        f"shards {'fetched back from process 0' if fetched else 'NOT fetched back'}; curve "
        f"{'differs: ' + differs if differs else 'equal bit for bit'} to a 2-process run "
        "that never stopped", started)


def corrupt_drill(d: Drill, rng: random.Random):
  """A preempted run's newest gs://-tier step gets a 4 KiB block of random
  bytes in one array file (bit rot, a bad copy): the default `refuse` stops
  with the step and its path named; `fallback` sets it aside and resumes
  from the step before, and the curve equals the uninterrupted run's."""
  started = time.monotonic()
  reference, chain = d.uninterrupted(), d.path("corrupt")
  run = Run(chain, d.out)
  run.wait_for(rf"step {rng.randint(2 * SAVE_EVERY + 1, 3 * SAVE_EVERY)}/")
  run.process.terminate()  # a preemption: the step after the signal commits
  run.finish()
  steps = committed(chain)
  newest = f"{chain}/checkpoints/{steps[-1]}"
  files = [p for p in glob.glob(f"{newest}/state/**/d/*", recursive=True) if os.path.isfile(p)]
  victim = rng.choice([p for p in files if os.path.getsize(p) > 8192])
  with open(victim, "r+b") as f:
    f.seek(rng.randrange(os.path.getsize(victim) - 4096))
    f.write(rng.randbytes(4096))
  refused = Run(chain, d.out)
  refused_code = refused.finish()
  message = final_error(refused)
  refused_ok = (refused_code == 1 and "does not match its checksum" in message
                and newest in message and "checkpoint.on_corrupt=fallback" in message)
  fallback = Run(chain, d.out, **{"checkpoint.on_corrupt": "fallback"})
  code = fallback.finish()
  set_aside = glob.glob(f"{newest}.corrupt-*")
  differs = same_curve(chain, reference)
  d.row("corrupt: 4 KiB of random bytes in the newest step's array file, refuse then "
        "fallback", 1,
        refused_ok and code == 0 and fallback.resumed_from() == steps[-2] and set_aside
        and not differs,
        f"refuse: exit {refused_code}, '{message[:160]}...'; fallback: step {steps[-1]} set "
        f"aside ({len(set_aside)} copy), resumed from {fallback.resumed_from()}, exit {code}; "
        f"curve {'differs: ' + differs if differs else 'equal bit for bit'}", started)
