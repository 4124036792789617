"""python -m drills: run the drills, print the table."""

import os
import random
import shutil
import subprocess
import time

from absl import app, flags, logging

from drills.harness import Drill, Run
from drills.non_finite import nan_drill
from drills.processes import kill_drill, preemption_drill
from drills.storage import disk_drill, storage_drill
from drills.tiers import corrupt_drill, local_tier_drill
from drills.topology import topology_drill

DRILLS = ("kill", "preemption", "nan", "storage", "topology", "disk", "local", "corrupt")
_OUT = flags.DEFINE_string("out", "/tmp/griffin_drills", "Workdirs, logs and the XLA cache "
                           "(emptied first).")
_DRILLS = flags.DEFINE_list("drills", list(DRILLS), f"Which of {list(DRILLS)}.")
_KILLS = flags.DEFINE_integer("kills", 20, "SIGKILLs of the kill drill, half of them aimed "
                              "at a save in flight.")
_LOCAL_KILLS = flags.DEFINE_integer("local_kills", 6, "SIGKILLs of the local-tier drill "
                                    "(the first run starts fresh, the last restart finds "
                                    "its RAM disk wiped).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
_OUTAGE_LIMIT = flags.DEFINE_integer("outage_limit_s", 1200, "How long the unhealed GCS "
                                     "outage may take to fail the run.")


def main(argv):
  del argv
  unknown = sorted(set(_DRILLS.value) - set(DRILLS))
  if unknown:
    raise ValueError(f"--drills={','.join(_DRILLS.value)}: {unknown} not among {list(DRILLS)}")
  if "local" in _DRILLS.value and _LOCAL_KILLS.value < 2:
    raise ValueError(f"--local_kills={_LOCAL_KILLS.value}: the local drill needs at least 2 "
                     "(a fresh start, then a restart from the wiped RAM disk)")
  logging.set_verbosity(logging.WARNING)  # Orbax's listings of the drill's own checks
  out = _OUT.value
  if os.path.exists(out):
    for mounted in ("disk", "ext4"):
      subprocess.run(["umount", "-l", os.path.join(out, mounted)], capture_output=True)
    shutil.rmtree(out)
  os.makedirs(out)
  rng = random.Random(_SEED.value)
  d = Drill(out)
  print("| drill | trials | outcome | seconds |\n|---|---|---|---|", flush=True)
  for name in _DRILLS.value:
    started = time.monotonic()
    try:
      {"kill": lambda: kill_drill(d, _KILLS.value, rng),
       "preemption": lambda: preemption_drill(d, rng),
       "nan": lambda: nan_drill(d),
       "storage": lambda: storage_drill(d, _OUTAGE_LIMIT.value),
       "topology": lambda: topology_drill(d), "disk": lambda: disk_drill(d),
       "local": lambda: local_tier_drill(d, _LOCAL_KILLS.value, rng),
       "corrupt": lambda: corrupt_drill(d, rng)}[name]()
    except Exception as e:  # noqa: BLE001 - a drill that breaks is a failed row
      d.row(f"{name}: the drill itself broke", 1, False, f"{type(e).__name__}: {e}", started)
    for run in Run.started:  # none outlives its drill
      if run.process.poll() is None:
        run.kill()
  print("\n| drill | trials | outcome | seconds |\n|---|---|---|---|")
  for drill, trials, outcome, seconds in d.rows:
    print(f"| {drill} | {trials} | {outcome} | {seconds:.0f} |")
  print(f"\n{len(d.rows) - d.failures} of {len(d.rows)} rows passed; logs in {out}/logs")
  return 1 if d.failures else 0


if __name__ == "__main__":
  app.run(main)
