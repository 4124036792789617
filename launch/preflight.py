"""What both pod launchers do before anything is created in the cloud.

`launch/tpu_vm.py` and `launch/gke.py` share it: the flags every pod job has,
loading the config exactly as `trainer.train` does, the checks of the TPU
type, slice count, host count and workdir against that config, the
compile-only check (`python -m aot.compile_check` in its own process), the train
command every host runs, and how commands are echoed and run.
"""

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from aot import compile_check as aot_check
from common import cli, config_flag
from sharding import topologies
from trainer import config as config_lib

# Google's APIs (gcloud --accelerator-type, xpk --tpu-type) call v5e "v5litepod".
_CLOUD_PREFIX = {"v5e": "v5litepod"}
# xpk's rule for workload names; it also fits queued resources, TPU VM nodes
# and docker containers, so one name serves every launcher.
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_MAX_NAME = 40
_INSTALL_HINTS = {"gcloud": "install the Google Cloud CLI",
                  "xpk": "pip install xpk",
                  "kubectl": "gcloud components install kubectl"}


def hosts_per_slice(tpu: topologies.TpuType) -> int:
  """TPU VM hosts (JAX processes) in one slice of `tpu`."""
  gen = tpu.generation
  return 1 if tpu.chips <= gen.single_host_chips else tpu.chips // gen.host_chips


def cloud_accelerator_type(tpu_type: str) -> str:
  """The name gcloud and xpk take: `v5e-16` -> `v5litepod-16`, others unchanged."""
  generation, size = tpu_type.split("-")
  return f"{_CLOUD_PREFIX.get(generation, generation)}-{size}"


@dataclasses.dataclass(frozen=True)
class Job:
  """One pod job, checked: what every launcher command is built from."""

  name: str
  config_file: str  # as given to --config, relative to the repository root
  overrides: tuple[str, ...]  # "--config.a.b=v", forwarded to every host
  tpu: topologies.TpuType
  num_slices: int
  workdir: str
  local_dir: str = ""  # the local checkpoint tier's directory on every host; "" = off

  @property
  def hosts(self) -> int:
    """JAX processes of the whole job."""
    return hosts_per_slice(self.tpu) * self.num_slices

  def train_argv(self, python: str = "python") -> list[str]:
    """The command every host runs: the same on all of them."""
    # --num_processes=0: every host discovers the others (the same command on all).
    return [python, "-m", "trainer.train", f"--config={self.config_file}",
            f"--workdir={self.workdir}", "--num_processes=0", *self.overrides]

  def aot_argv(self) -> list[str]:
    return [sys.executable, "-m", "aot.compile_check", f"--config={self.config_file}",
            f"--topology={self.tpu.name}", f"--num_slices={self.num_slices}",
            *self.overrides]


def check_name(name: str) -> str:
  if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
    raise ValueError(f"--name={name!r} must be at most {_MAX_NAME} characters of "
                     "lowercase letters, digits and '-', starting with a letter and "
                     "not ending with '-' (it names the queued resource, the TPU VMs, "
                     "the container and the xpk workload).")
  return name


def check_workdir(workdir: str) -> str:
  if not isinstance(workdir, str) or not re.fullmatch(r"gs://[^/]+(/.*)?", workdir):
    raise ValueError(
        f"--workdir={workdir!r} must be a gs://BUCKET/PATH: every host of a pod job "
        "writes one checkpoint and reads it back after a preemption, so it must be "
        "storage all hosts share (a local path is a different disk on each host).")
  return workdir


def check_local_dir(checkpoint: config_lib.CheckpointConfig) -> str:
  """The local tier's directory ('' when it is off), absolute: the container
  (docker on TPU VMs, the pod on GKE) mounts that path from the host."""
  if not checkpoint.local_every_steps:
    return ""
  if not os.path.isabs(checkpoint.local_dir):
    raise ValueError(
        f"--config.checkpoint.local_dir={checkpoint.local_dir!r} must be an absolute path "
        "for a pod job (e.g. /dev/shm/griffin): each host's container mounts that "
        "directory from the host, so that it outlives the container.")
  return os.path.normpath(checkpoint.local_dir)


def check_config_file(path: str) -> str:
  if os.path.isabs(path) or os.path.normpath(path).startswith(".."):
    raise ValueError(
        f"--config={path!r} must be a path inside this repository, relative to its "
        "root (e.g. configs/griffin_14b.py): every host reads it from its own copy "
        "of the code (the image, or the checkout copied to it).")
  return path


def check_job(config: config_lib.Config, tpu_type: str, num_slices: int,
              workdir: str) -> topologies.TpuType:
  """Every check that needs no compile; returns the TPU type's table row.

  Unknown TPU type, slice count and mesh sizes that disagree (ICI sizes must
  multiply to the chips of a slice, DCN sizes to the slices) and a batch the
  mesh does not divide are `aot.compile_check.validate`'s; this adds the workdir and
  the host count (every host reads its own rows of each batch).
  """
  check_workdir(workdir)
  tpu, _ = aot_check.validate(config, tpu_type, num_slices)
  config.data.check_hosts(hosts_per_slice(tpu) * num_slices,
                          f" of {num_slices} x {tpu_type}, {hosts_per_slice(tpu)} per slice")
  return tpu


def define_job_flags(fv: flags.FlagValues):
  """The flags of every pod launcher, on `fv` (read back as `fv[name].value`)."""
  config_flag.define_config_flag(flag_values=fv)
  flags.DEFINE_string(
      "tpu_type", None, "Accelerator type of one slice, e.g. v5p-128 (v5p/v4 "
      "count cores, v5e/v6e chips).", flag_values=fv)
  flags.DEFINE_integer(
      "num_slices", 1, "Slices joined over DCN; the config's mesh.dcn_* sizes "
      "must multiply to it.", flag_values=fv)
  flags.DEFINE_string("workdir", None, "gs:// path of the run's checkpoints and metrics.",
                      flag_values=fv)
  flags.DEFINE_string(
      "name", None, "Job name: queued resource / TPU VM prefix / xpk workload.",
      flag_values=fv)
  flags.DEFINE_string("project", None, "Google Cloud project.", flag_values=fv)
  flags.DEFINE_string("zone", None, "Zone of the TPUs, e.g. us-east5-a.", flag_values=fv)
  flags.DEFINE_string(
      "image", None, "The trainer's container image (infra/Dockerfile), e.g. "
      "us-docker.pkg.dev/PROJECT/griffin/trainer:TAG.", flag_values=fv)
  flags.DEFINE_string(
      "log_dir", "logs", "Local directory for the `logs` action: one file per "
      "worker.", flag_values=fv)
  flags.DEFINE_bool(
      "skip_aot_check", False, "Do not run the compile-only check "
      "(python -m aot.compile_check) before submitting.", flag_values=fv)
  flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.",
                    flag_values=fv)


def parse(argv: list[str], fv: flags.FlagValues, actions: tuple[str, ...],
          doc: str) -> str:
  """Parses `argv` into `fv`; returns the one positional ACTION."""
  if any(a in ("-h", "--help", "--helpshort") for a in argv[1:]):
    print(doc + "\n" + fv.get_help(include_special_flags=False))
    raise SystemExit(0)
  # config_flags looks for the --config.a.b=v overrides in sys.argv while it
  # parses; make that `argv` when main is called with its own (tests do).
  saved, sys.argv = sys.argv, argv
  try:
    rest = fv(argv)[1:]
  except flags.Error as e:
    raise SystemExit(f"error: {e}") from None
  except (AttributeError, KeyError) as e:  # ml_collections: an override naming no field
    raise SystemExit(f"error: {cli.override_error(argv, e)}") from None
  finally:
    sys.argv = saved
  if len(rest) != 1 or rest[0] not in actions:
    raise SystemExit(f"error: give one action, one of {', '.join(actions)}; got {rest}")
  return rest[0]


def require(fv: flags.FlagValues, *names: str):
  missing = [f"--{n}" for n in names if fv[n].value is None]
  if missing:
    raise ValueError(f"missing flag(s) {', '.join(missing)}; this action needs them.")


def load_job(fv: flags.FlagValues) -> Job:
  """The Job of the parsed flags, every check done, the compile-only one last
  (unless --skip_aot_check; under --dry_run it is only printed)."""
  require(fv, "config", "tpu_type", "workdir", "name")
  name = check_name(fv["name"].value)
  config_file = check_config_file(config_flags.get_config_filename(fv["config"]))
  config = config_lib.build(config_flag.flag_config(fv["config"]))  # as trainer.train does
  tpu = check_job(config, fv["tpu_type"].value, fv["num_slices"].value,
                  fv["workdir"].value)
  overrides = tuple(f"--config.{path}={value}" for path, value in
                    config_flags.get_override_values(fv["config"]).items())
  job = Job(name, config_file, overrides, tpu, fv["num_slices"].value,
            fv["workdir"].value, check_local_dir(config.checkpoint))
  if not fv["skip_aot_check"].value:
    compile_check(job, dry_run=fv["dry_run"].value)
  return job


def compile_check(job: Job, dry_run: bool = False):
  """`python -m aot.compile_check` for the job's config and TPU type; raises unless it fits."""
  code = run(job.aot_argv(), dry_run=dry_run, check=False)
  if code:
    raise RuntimeError(
        f"the compile-only check exited {code}: the step does not fit "
        f"{job.num_slices} x {job.tpu.name}, or it failed before compiling (its "
        "output is above); nothing was submitted. --skip_aot_check skips it.")


def run(argv: list[str], dry_run: bool = False, check: bool = True, **kwargs) -> int:
  """Echoes `argv` as a shell line, then runs it (unless dry_run); its exit code."""
  print("+ " + shlex.join(argv), flush=True)
  if dry_run:
    return 0
  _check_installed(argv)
  code = subprocess.run(argv, **kwargs).returncode
  if check and code:
    raise RuntimeError(f"exit code {code} from: {shlex.join(argv)}")
  return code


def output(argv: list[str]) -> str:
  """Echoes and runs `argv` (also under --dry_run: it only reads); its stdout."""
  print("+ " + shlex.join(argv), flush=True)
  _check_installed(argv)
  done = subprocess.run(argv, capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f"exit code {done.returncode} from: {shlex.join(argv)}\n"
                       f"{done.stderr.strip()}")
  return done.stdout


def _check_installed(argv: list[str]):
  if shutil.which(argv[0]) is None:
    raise RuntimeError(f"{argv[0]!r} is not on PATH "
                       f"({_INSTALL_HINTS.get(argv[0], 'install it')}).")


def print_started(job: Job, what: str):
  print(f"{what}; watch: the `logs` action, or TensorBoard on {job.workdir}")


def run_all(commands: list[list[str]], dry_run: bool = False):
  """Runs the commands at once (one per slice) and waits for all of them."""
  for argv in commands:
    print("+ " + shlex.join(argv), flush=True)
  if dry_run:
    return
  for argv in commands:
    _check_installed(argv)
  procs = [(argv, subprocess.Popen(argv)) for argv in commands]
  failed = [(argv, code) for argv, proc in procs if (code := proc.wait())]
  if failed:
    raise RuntimeError("; ".join(f"exit code {code} from: {shlex.join(argv)}"
                                 for argv, code in failed))


def main(argv: list[str], doc: str, actions: tuple[str, ...], define_flags, act) -> int:
  """A launcher's main: its flags on a fresh FlagValues (so tests can call it),
  then `act(fv, action)`; a bad value or a failed command is one line, exit 1."""
  fv = flags.FlagValues()
  define_flags(fv)
  action = parse(argv, fv, actions, doc)
  try:
    act(fv, action)
  except (ValueError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0
