"""Train a Griffin / Hawk / MQA model.

    python -m trainer.train --config=configs/X.py --workdir=DIR_OR_GS_PATH \\
        [--config.a.b=v ...] [--init_from=CKPT_STEP_DIR] [--init_params_from=...]

On SIGTERM (preemption) it saves at the next step boundary and exits 0 once
that step is committed, or 1 if it was not within checkpoint.preemption_grace_s
of the signal. Any error exits 1 after it is logged, without waiting longer
than that grace for a save in flight.

Several processes (one per host, or `launch/local.py` on one machine) run the
same command with --num_processes/--process_id/--coordinator_address; on Cloud
TPU and GKE, --num_processes=0 lets `jax.distributed` discover them itself.
"""

import os
import sys
import traceback

from absl import flags, logging

from common import cli, config_flag, storage
from trainer import config as config_lib

_CONFIG = config_flag.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Local directory or gs:// path.", required=True)
_INIT_FROM = flags.DEFINE_string("init_from", "", "A checkpoint step dir: the full state.")
_INIT_PARAMS_FROM = flags.DEFINE_string("init_params_from", "", "A checkpoint step dir: parameters only.")
_PROFILE = flags.DEFINE_list("profile_steps", [], "START,STOP: write a profiler trace of steps "
                             "START..STOP (inclusive, from 1) to <workdir>/profile.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process CPU/GPU runs).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", 1, "Processes in the run; 0 = discover them (Cloud TPU, GKE: what "
    "launch/ passes), with jax.distributed.initialize() and no arguments.", lower_bound=0)
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index.")


def parse_profile_steps(values: list[str], steps: int) -> tuple[int, int] | None:
  if not values:
    return None
  try:
    start, stop = (int(v) for v in values)
  except ValueError:
    start = stop = None
  if start is None or not 1 <= start <= stop <= steps:
    raise ValueError(f"--profile_steps={','.join(values)} must be START,STOP with "
                     f"1 <= START <= STOP <= run.steps={steps}, e.g. --profile_steps=5,7")
  return start, stop


def main():
  from trainer.train_lib import train  # after flag parsing: importing JAX is slow
  from trainer.preemption import PreemptionTimeoutError
  config = config_lib.build(config_flag.flag_config(_CONFIG))
  profile = parse_profile_steps(_PROFILE.value, config.run.steps)
  paths = {"--workdir": _WORKDIR.value, "--init_from": _INIT_FROM.value,
           "--init_params_from": _INIT_PARAMS_FROM.value, "data.tokenizer": config.data.tokenizer,
           "data.data_dir": config.data.data_dir,
           **{f"data.stores ({name})": path for name, path in config.data.store_paths().items()}}
  for flag, path in paths.items():  # in seconds, not after a minute of retries
    if path.startswith("gs://"):
      storage.check_gcs_reachable(path, flag)
      break  # one endpoint and one set of credentials for all of them
  try:
    train(config, _WORKDIR.value, init_from=_INIT_FROM.value,
          init_params_from=_INIT_PARAMS_FROM.value, profile_steps=profile,
          coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
          process_id=_PROCESS_ID.value)
  except PreemptionTimeoutError as e:
    _exit_now(f"training stopped: {type(e).__name__}: {e}")
  except Exception as e:  # noqa: BLE001 - logged (bad input: one line), then the same exit
    if cli.is_refusal(e) and not cli.verbose():
      _exit_now(f"{cli.command_name()}: {e}", refusal=True)
    _exit_now(f"training stopped: {type(e).__name__}: {e}\n{traceback.format_exc()}")


def _exit_now(message: str, refusal: bool = False):
  """Logs `message` (a refusal of input: prints it) and exits 1 at once. A
  save abandoned in flight (out of grace, or storage gone) runs on Orbax
  threads that are not daemons: a normal exit would wait for them as long as
  the storage clients retry."""
  if refusal:
    logging.flush()
    print(message, file=sys.stderr)
  else:
    logging.error("%s", message)
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)


if __name__ == "__main__":
  cli.run(main)
