"""Process faults: SIGKILL at random moments and mid-save; SIGTERM within and
beyond the preemption grace."""

import glob
import os
import random
import re
import time

from drills.harness import (MID_SAVE, SAVE_EVERY, STEPS, Drill, Run, committed,
                                       same_curve)


# --- kills --------------------------------------------------------------------


def kill_drill(d: Drill, kills: int, rng: random.Random):
  started = time.monotonic()
  reference, chain = d.uninterrupted(), d.path("kill")
  mid_save = wrong_resumes = 0
  for k in range(kills):
    before = committed(chain)
    start = before[-1] if before else 0
    launched = time.time()
    run = Run(chain, d.out)
    if start + 2 * SAVE_EVERY >= STEPS:
      raise RuntimeError(f"the chain reached step {start} of {STEPS} before {kills} kills; "
                         "raise STEPS")
    if k % 2 == 0:  # aimed: at one of the next two saves, in flight
      target = start + SAVE_EVERY * rng.randint(1, 2)
      run.wait_for(MID_SAVE.replace(r"(\d+)", str(target)))
    else:  # a random moment: after one of the next steps, a random fraction of a second
      run.wait_for(rf"step {start + rng.randint(1, 2 * SAVE_EVERY)}/")
      time.sleep(rng.uniform(0, 0.5))
    run.process.kill()
    # Only this run's: a temporary directory stays until its step is saved again.
    half_written = [p for p in glob.glob(f"{chain}/checkpoints/*.orbax-checkpoint-tmp*")
                    if os.path.getmtime(p) >= launched]
    run.finish()
    mid_save += bool(half_written)
    wrong_resumes += run.resumed_from() != (before[-1] if before else None)
    print(f"  kill {k + 1}: resumed from {run.resumed_from()}, committed then {before}, "
          f"mid-save: {bool(half_written)}", flush=True)
  before = committed(chain)
  final = Run(chain, d.out)
  code = final.finish()
  wrong_resumes += final.resumed_from() != before[-1]
  differs = same_curve(chain, reference)
  d.row("kill: SIGKILL at random moments, restart each time", kills,
        code == 0 and not differs and not wrong_resumes and mid_save > 0,
        f"{mid_save} kills landed mid-save (a temporary step directory on disk); every "
        f"restart resumed from the newest committed step ({wrong_resumes} did not); final "
        f"curve {'differs: ' + differs if differs else 'equal bit for bit'} to the "
        f"uninterrupted run's ({STEPS} steps, every record of every re-run step)", started)


# --- preemption ---------------------------------------------------------------


def preemption_drill(d: Drill, rng: random.Random):
  started = time.monotonic()
  reference, chain = d.uninterrupted(), d.path("preemption")
  latencies, problems = [], []
  for _ in range(3):
    before = committed(chain)
    run = Run(chain, d.out)
    run.wait_for(rf"step {rng.randrange((before or [0])[-1] + 1, STEPS - 2)}/")
    run.process.terminate()
    code = run.finish()
    match = re.search(r"SIGTERM: step (\d+) is committed, ([\d.]+) s after", run.log())
    if code != 0 or not match or committed(chain)[-1] != int(match.group(1)):
      problems.append(f"exit {code}, {run.log_path}")
    else:
      latencies.append(float(match.group(2)))
  # A grace too short to commit: a clear message, exit 1, the step not counted.
  before = committed(chain)
  run = Run(chain, d.out, **{"checkpoint.preemption_grace_s": 0.001})
  run.wait_for(r"step \d+/\d+ \|")
  run.process.terminate()
  code = run.finish()
  short_grace_ok = (code == 1 and "did not commit" in run.log()
                    and committed(chain) == before)
  final = Run(chain, d.out)
  code = final.finish()
  differs = same_curve(chain, reference)
  d.row("preemption: SIGTERM (grace 30 s), then resume", 3,
        not problems and code == 0 and not differs,
        f"exit 0 each time, the step after the signal committed "
        f"{min(latencies, default=0):.2f}-{max(latencies, default=0):.2f} s after it; "
        f"resumed curve {'differs: ' + differs if differs else 'equal bit for bit'}"
        + (f"; problems: {problems}" if problems else ""), started)
  d.row("preemption: SIGTERM with preemption_grace_s=0.001", 1, short_grace_ok,
        "exit 1, 'did not commit ... within checkpoint.preemption_grace_s=0.001 s', the "
        "half-saved step not listed; the next run resumed exactly (above)", started)
