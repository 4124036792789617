"""Time to the first step after a restart, with and without the persistent
compilation cache (`run.compilation_cache`).

Command, from the repository root (about 4 minutes on a 2-core CPU):
  python -m benchmarks.restart_time [--config=configs/smoke.py] [--steps=4]

For each setting, two `python -m trainer.train` processes of the same
config in one fresh workdir: a first run, stopped by SIGTERM after step 2 (it
saves the next step and exits, as under preemption), then a restart that
resumes from that step and trains to --steps. Each run's goodput record
(`trainer/goodput.py`) gives the time from its process start to its first
step's loss, and the phases before it: start-up (imports, devices, data,
program built), restore and compile. The cache lives in the workdir, so the
restart finds what the first run compiled (on a pod the workdir is on GCS and
a restart on new VMs finds it the same way). JAX_COMPILATION_CACHE_DIR is
removed from the runs' environment.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile

from trainer import goodput

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(config: str, workdir: str, steps: int, cache: bool, stop_after: int | None = None):
  """One run; with `stop_after`, SIGTERM once that step is logged (it saves the
  next step and exits, as under preemption)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  process = subprocess.Popen(
      [sys.executable, "-m", "trainer.train", f"--config={config}", f"--workdir={workdir}",
       f"--config.run.steps={steps}", f"--config.run.compilation_cache={cache}",
       "--config.run.log_every_steps=1", "--config.run.eval_every_steps=0",
       "--config.optimizer.warmup_steps=1", "--config.checkpoint.save_every_steps=100"],
      cwd=_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  for line in process.stdout:
    if stop_after is not None and line.startswith(f"step {stop_after}/"):
      process.send_signal(signal.SIGTERM)
  if process.wait():
    raise RuntimeError(f"the run in {workdir} failed (exit {process.returncode})")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/smoke.py")
  parser.add_argument("--steps", type=int, default=6)
  args = parser.parse_args()
  print("| run | compilation cache | start-up s | restore s | compile s | to the first "
        "step's loss s |\n|---|---|---:|---:|---:|---:|")
  for cache in (False, True):
    with tempfile.TemporaryDirectory() as workdir:
      train(args.config, workdir, args.steps, cache, stop_after=2)
      train(args.config, workdir, args.steps, cache)
      for name, run in zip(("first", "restart"), goodput.read_runs(workdir)):
        s = run["seconds"]
        print(f"| {name} | {'on' if cache else 'off'} | {s['startup']:.1f} | "
              f"{s['restore']:.1f} | {s['compile']:.1f} | "
              f"{run['first_step_at'] - run['process_start']:.1f} |", flush=True)


if __name__ == "__main__":
  main()
