"""Run N JAX processes of one command on this machine (a CPU pod in a box).

    python -m launch.local --num_processes=2 --devices_per_process=4 -- \\
        python -m trainer.train --config=configs/smoke.py --workdir=/tmp/run

Each process gets --coordinator_address/--num_processes/--process_id appended,
fake CPU devices through XLA_FLAGS, and its own log file
`<log_dir>/process_<i>.log`. Exits with the first non-zero exit code.
"""

import argparse
import os
import socket
import subprocess
import sys


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(command: list[str], num_processes: int, devices_per_process: int,
           log_dir: str) -> int:
  """Starts the processes, waits for all, returns the first failure's code (or 0)."""
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError(f"--num_processes={num_processes} and --devices_per_process="
                     f"{devices_per_process} must be >= 1")
  os.makedirs(log_dir, exist_ok=True)
  coordinator = f"127.0.0.1:{free_port()}"
  # The caller's other XLA flags are kept; the device count is this one.
  inherited = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
               if not flag.startswith("--xla_force_host_platform_device_count")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
      [*inherited, f"--xla_force_host_platform_device_count={devices_per_process}"]))
  procs = []
  for i in range(num_processes):
    log = open(os.path.join(log_dir, f"process_{i}.log"), "w")
    args = command + [f"--coordinator_address={coordinator}",
                      f"--num_processes={num_processes}", f"--process_id={i}"]
    procs.append((subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT), log))
  codes = []
  for proc, log in procs:
    codes.append(proc.wait())
    log.close()
  return next((code for code in codes if code), 0)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4)
  parser.add_argument("--log_dir", default="/tmp/griffin_local_logs")
  parser.add_argument("command", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command to run after --")
  return launch(command, args.num_processes, args.devices_per_process, args.log_dir)


if __name__ == "__main__":
  sys.exit(main())
