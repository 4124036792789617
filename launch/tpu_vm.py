"""Train on Cloud TPU VMs: a queued resource of N slices, one command on every host.

    python -m launch.tpu_vm --config=configs/griffin_14b.py --config.mesh.dcn_data=2 \\
        --tpu_type=v5p-128 --num_slices=2 --workdir=gs://BUCKET/griffin-14b \\
        --name=griffin-14b --project=PROJECT --zone=us-east5-a \\
        --image=us-docker.pkg.dev/PROJECT/griffin/trainer:TAG [--capacity=spot] ACTION

ACTION:
  submit  create, then run: the one command from nothing to a training job
  create  check the job, run the compile-only check, create the queued resource,
          wait until it is ACTIVE, then pull the image (or, without --image,
          copy this checkout and pip install it) on every worker of every slice
  run     check, then start `python -m trainer.train` on every worker, detached
          (it outlives this command; a second `run` restarts it, and it resumes
          from the workdir's latest checkpoint)
  supervise  bring the job up (create, or start it on an ACTIVE resource) and
          keep it going until it finishes: a preempted, suspended or failed
          queued resource is recreated and the job rerun (it resumes), with a
          restart budget and backoff (launch/supervise.py)
  logs    copy each worker's output to --log_dir/<node>/<worker>.log
  delete  delete the queued resource and its TPU VMs

Checks before anything is created: the TPU type exists, mesh.ici_* multiply to
the chips of one slice and mesh.dcn_* to --num_slices, the global batch splits
over the mesh and the hosts, the workdir is gs://. Multi-slice: the queued
resource gives every host the MEGASCALE_* settings, so the same command runs
unchanged on 1 or N slices.
"""

import os
import pathlib
import shlex
import sys
import tarfile
import tempfile
import time

from absl import flags

from launch import preflight, supervise

ACTIONS = ("submit", "create", "run", "supervise", "logs", "delete")
# TPU VM software images (Cloud TPU docs, "TPU software versions").
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5e": "v2-alpha-tpuv5-lite",
                    "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
CAPACITY_FLAGS = {"on_demand": [], "spot": ["--spot"], "reserved": ["--reserved"]}
# Without --image: what `pip install -e .` needs, copied to every worker.
SOURCE = ("pyproject.toml", "README.md", "aot", "common", "configs", "launch", "model",
          "pipeline", "sharding", "trainer")
_ROOT = pathlib.Path(__file__).resolve().parents[1]
_REMOTE_DIR = "griffin"  # in the worker's home directory


def define_flags(fv: flags.FlagValues):
  preflight.define_job_flags(fv)
  flags.DEFINE_enum("capacity", "on_demand", list(CAPACITY_FLAGS),
                    "Which TPU capacity the queued resource asks for.", flag_values=fv)
  flags.DEFINE_string(
      "runtime_version", None, "TPU VM image; default per generation: "
      + ", ".join(f"{g} {v}" for g, v in RUNTIME_VERSIONS.items()), flag_values=fv)
  flags.DEFINE_string(
      "service_account", None, "The TPU VMs' service account (Terraform output "
      "`service_account`); default: the project's Compute Engine one.", flag_values=fv)
  flags.DEFINE_float("poll_interval_s", 60.0,
                     "Seconds between queued-resource state checks.", flag_values=fv)
  flags.DEFINE_integer("max_restarts", 20, "supervise: recoveries before giving up.",
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_float("restart_backoff_s", 60.0, "supervise: wait before the first "
                     "recovery, doubling with each.", lower_bound=0, flag_values=fv)
  flags.DEFINE_float("max_backoff_s", 1800.0, "supervise: the longest wait before a "
                     "recovery.", lower_bound=0, flag_values=fv)


def nodes(name: str, num_slices: int) -> list[str]:
  """TPU VM names: the node id for one slice, `<prefix>-<i>` for several."""
  return [name] if num_slices == 1 else [f"{name}-{i}" for i in range(num_slices)]


def _where(fv) -> list[str]:
  return [f"--project={fv['project'].value}", f"--zone={fv['zone'].value}"]


def _ssh(fv, node: str, command: str, *extra: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *_where(fv),
          "--worker=all", f"--command={command}", *extra]


def create_command(fv, job: preflight.Job) -> list[str]:
  runtime = fv["runtime_version"].value or RUNTIME_VERSIONS[job.tpu.name.split("-")[0]]
  argv = ["gcloud", "compute", "tpus", "queued-resources", "create", job.name,
          *_where(fv), f"--accelerator-type={preflight.cloud_accelerator_type(job.tpu.name)}",
          f"--runtime-version={runtime}"]
  # gcloud takes --node-count only above 1; one slice is a plain node id.
  argv += ([f"--node-id={job.name}"] if job.num_slices == 1 else
           [f"--node-count={job.num_slices}", f"--node-prefix={job.name}"])
  if fv["service_account"].value:
    # Scopes allow every API; the service account's IAM roles are the real limit.
    argv += [f"--service-account={fv['service_account'].value}",
             "--scopes=https://www.googleapis.com/auth/cloud-platform"]
  return argv + CAPACITY_FLAGS[fv["capacity"].value]


def _describe(fv, name: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "queued-resources", "describe", name,
          *_where(fv), "--format=value(state.state)"]


def wait_until_active(fv, name: str):
  """Polls the queued resource until ACTIVE; raises if it can no longer get there."""
  while True:
    state = supervise.queued_state(_describe(fv, name))  # None: gcloud could not say
    print(f"queued resource {name}: {state}", flush=True)
    if state == "ACTIVE":
      return
    if state in supervise.LOST:
      raise RuntimeError(f"queued resource {name} is {state}; delete it (the "
                         "`delete` action) and create it again.")
    time.sleep(fv["poll_interval_s"].value)


def source_tarball(directory: str) -> str:
  """This checkout's SOURCE as a .tar.gz in `directory` (for --image-less runs)."""
  path = os.path.join(directory, "griffin.tar.gz")
  skip = lambda info: None if "__pycache__" in info.name else info  # noqa: E731
  with tarfile.open(path, "w:gz") as tar:
    for name in SOURCE:
      tar.add(_ROOT / name, arcname=name, filter=skip)
  return path


def install_commands(fv, job: preflight.Job, tarball: str | None) -> list[list[list[str]]]:
  """What puts the trainer on every worker: rounds of commands, one per slice each.

  With --image, one round: pull the image. Without, two: copy this checkout's
  SOURCE, then unpack it and pip install it.
  """
  image, names = fv["image"].value, nodes(job.name, job.num_slices)
  if image:
    registry = image.split("/")[0]
    # root's docker reads the registry with the VM's service account.
    command = (f"sudo gcloud auth configure-docker {registry} --quiet && "
               f"sudo docker pull {shlex.quote(image)}")
    return [[_ssh(fv, node, command) for node in names]]
  # TPU VM images ship Python 3.10; the project needs 3.11 (Ubuntu's python3.11).
  command = (f"rm -rf {_REMOTE_DIR} && mkdir {_REMOTE_DIR} && "
             f"tar -xzf griffin.tar.gz -C {_REMOTE_DIR} && "
             "sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 "
             f"python3.11-venv && python3.11 -m venv {_REMOTE_DIR}/.venv && "
             f"{_REMOTE_DIR}/.venv/bin/pip install -q -e './{_REMOTE_DIR}[tpu]'")
  copy = [["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"{node}:griffin.tar.gz",
           *_where(fv), "--worker=all"] for node in names]
  return [copy, [_ssh(fv, node, command) for node in names]]


def run_command(fv, job: preflight.Job) -> str:
  """The shell line every worker runs: starts training detached, replacing an old run."""
  image = fv["image"].value
  if image:
    train = shlex.join(job.train_argv())
    # --privileged and the host network: the TPU devices and the slice's
    # MEGASCALE/metadata settings, as on the VM itself. The local tier is the
    # host's directory: docker's own /dev/shm is 64 MB and goes with the container.
    mount = (f"-v {shlex.quote(job.local_dir)}:{shlex.quote(job.local_dir)} "
             if job.local_dir else "")
    return (f"sudo docker rm -f {job.name} >/dev/null 2>&1; sudo docker run -d "
            f"--name={job.name} --privileged --net=host {mount}{shlex.quote(image)} {train}")
  # The exit status goes to ~/<name>.exit, for `supervise` to read.
  train = shlex.join(job.train_argv(python=".venv/bin/python"))
  pid, done = f"~/{job.name}.pid", f"~/{job.name}.exit"
  return (f"kill $(cat {pid} 2>/dev/null) 2>/dev/null; rm -f {done}; cd {_REMOTE_DIR} && "
          f"(setsid nohup sh -c {shlex.quote(f'{train}; echo $? > {done}')} "
          f"> ~/{job.name}.log 2>&1 < /dev/null & echo $! > {pid})")


def status_command(fv, name: str) -> list[str]:
  """Asks worker 0 of the first slice whether the job runs: it prints
  `running`, `exited <code>` or `gone`."""
  if fv["image"].value:
    check = (f"sudo docker inspect -f '{{{{.State.Status}}}} {{{{.State.ExitCode}}}}' {name} "
             "2>/dev/null || echo gone")
  else:
    check = (f"if kill -0 $(cat ~/{name}.pid 2>/dev/null) 2>/dev/null; then echo running; "
             f"elif [ -f ~/{name}.exit ]; then echo exited $(cat ~/{name}.exit); "
             "else echo gone; fi")
  node = nodes(name, fv["num_slices"].value)[0]
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *_where(fv), "--worker=0",
          f"--command={check}"]


def log_command(fv, name: str) -> str:
  return (f"sudo docker logs {name} 2>&1" if fv["image"].value else f"cat ~/{name}.log")


def act(fv, action: str):
  dry = fv["dry_run"].value
  preflight.require(fv, "name", "project", "zone")
  name = preflight.check_name(fv["name"].value)
  if action == "delete":
    _delete(fv, name, dry)
    return
  if action == "logs":
    for node in nodes(name, fv["num_slices"].value):
      directory = os.path.join(fv["log_dir"].value, node)
      os.makedirs(directory, exist_ok=True)
      preflight.run(_ssh(fv, node, log_command(fv, name),
                         f"--output-directory={directory}"), dry_run=dry)
    print(f"one log per worker under {fv['log_dir'].value}/<node>/<worker>.log")
    return
  if action == "supervise" and dry:
    raise ValueError("--dry_run does not apply to supervise (it watches a live job)")
  job = preflight.load_job(fv)  # checks, then the compile-only check
  if action == "supervise":
    budget = supervise.Budget(fv["max_restarts"].value, fv["restart_backoff_s"].value,
                              fv["max_backoff_s"].value)

    def bring_up():
      _create(fv, job, dry)
      _start(fv, job, dry)

    supervise.supervise(
        _describe(fv, job.name), status_command(fv, job.name), bring_up=bring_up,
        delete=lambda: _delete(fv, job.name, dry), start_job=lambda: _start(fv, job, dry),
        budget=budget, poll_interval_s=fv["poll_interval_s"].value, name=job.name)
    return
  if action in ("submit", "create"):
    _create(fv, job, dry)
  if action in ("submit", "run"):
    _start(fv, job, dry)


def _delete(fv, name: str, dry: bool):
  preflight.run(["gcloud", "compute", "tpus", "queued-resources", "delete", name,
                 *_where(fv), "--force", "--quiet"], dry_run=dry)


def _create(fv, job: preflight.Job, dry: bool):
  """Creates the queued resource, waits until ACTIVE, installs the trainer."""
  preflight.run(create_command(fv, job), dry_run=dry)
  if not dry:
    wait_until_active(fv, job.name)
  with tempfile.TemporaryDirectory() as tmp:
    tarball = None if fv["image"].value else source_tarball(tmp)
    for commands in install_commands(fv, job, tarball):
      preflight.run_all(commands, dry_run=dry)


def _start(fv, job: preflight.Job, dry: bool):
  """Starts (or restarts) training on every worker of every slice."""
  preflight.run_all([_ssh(fv, node, run_command(fv, job))
                     for node in nodes(job.name, job.num_slices)], dry_run=dry)
  if not dry:
    preflight.print_started(job, f"started on {job.hosts} hosts")


def main(argv: list[str]) -> int:
  return preflight.main(argv, __doc__, ACTIONS, define_flags, act)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
