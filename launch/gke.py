"""Train on GKE TPU node pools through xpk (a JobSet: one pod per TPU VM host).

    python -m launch.gke --config=configs/griffin_14b.py --config.mesh.dcn_data=2 \\
        --tpu_type=v5p-128 --num_slices=2 --workdir=gs://BUCKET/griffin-14b \\
        --name=griffin-14b --cluster=griffin --project=PROJECT --zone=us-east5-a \\
        --image=us-docker.pkg.dev/PROJECT/griffin/trainer:TAG [--dry_run] ACTION

ACTION:
  submit  check the job, run the compile-only check, then `xpk workload create`
          (with --dry_run, xpk prints what it would apply and submits nothing)
  logs    one file per pod (= per host) under --log_dir, via kubectl
  delete  `xpk workload delete` of this workload only

The cluster and its TPU node pools (one per slice) come from infra/ or
`xpk cluster create`; spot or reserved capacity is a node-pool property there.
On a failure JobSet restarts every slice, up to --max_restarts times, and the
trainer resumes from the workdir's latest checkpoint, or from the local tier
(`checkpoint.local_dir`), which is then each node's multi-tier checkpointing
ramdisk (`--mtc-enabled`; the cluster needs the addon, docs/launch.md).
"""

import os
import shlex
import sys

from absl import flags

from launch import preflight

ACTIONS = ("submit", "logs", "delete")
# The label JobSet puts on every pod it creates.
_JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"


def define_flags(fv: flags.FlagValues):
  preflight.define_job_flags(fv)
  flags.DEFINE_string("cluster", None, "GKE cluster name.", flag_values=fv)
  flags.DEFINE_integer("max_restarts", 10,
                       "JobSet restarts after a failure or a preemption.", flag_values=fv)
  flags.DEFINE_string(
      "restart_on_exit_codes", None, "Exit codes that restart the JobSet besides "
      "xpk's default (42, 127-255: killed by a signal), e.g. '1'.", flag_values=fv)


def _xpk_where(fv) -> list[str]:
  return [f"--cluster={fv['cluster'].value}", f"--project={fv['project'].value}",
          f"--zone={fv['zone'].value}"]


def create_command(fv, job: preflight.Job) -> list[str]:
  argv = ["xpk", "workload", "create", *_xpk_where(fv), f"--workload={job.name}",
          f"--docker-image={fv['image'].value}",
          f"--tpu-type={preflight.cloud_accelerator_type(job.tpu.name)}",
          f"--num-slices={job.num_slices}", f"--max-restarts={fv['max_restarts'].value}"]
  if job.local_dir:  # GKE's multi-tier checkpointing ramdisk, which outlives the pod
    argv += ["--mtc-enabled", f"--ramdisk-directory={job.local_dir}"]
  if fv["restart_on_exit_codes"].value:
    argv.append(f"--restart-on-exit-codes={fv['restart_on_exit_codes'].value}")
  argv.append(f"--command={shlex.join(job.train_argv())}")
  return argv + (["--dry-run"] if fv["dry_run"].value else [])


def fetch_logs(fv, name: str):
  """Credentials for kubectl, then `kubectl logs` of each of the job's pods to a file."""
  dry = fv["dry_run"].value
  region = fv["zone"].value.rsplit("-", 1)[0]  # xpk and infra/ make regional clusters
  preflight.run(["gcloud", "container", "clusters", "get-credentials",
                 fv["cluster"].value, f"--location={region}",
                 f"--project={fv['project'].value}"], dry_run=dry)
  list_pods = ["kubectl", "get", "pods", "-l", f"{_JOBSET_LABEL}={name}",
               "-o", "jsonpath={.items[*].metadata.name}"]
  if dry:
    print("+ " + shlex.join(list_pods), flush=True)
    return
  pods = preflight.output(list_pods).split()
  if not pods:
    raise RuntimeError(f"no pods with {_JOBSET_LABEL}={name}: the workload is "
                       "queued, finished and cleaned up, or has another name.")
  os.makedirs(fv["log_dir"].value, exist_ok=True)
  for pod in pods:
    path = os.path.join(fv["log_dir"].value, f"{pod}.log")
    with open(path, "w") as log:
      preflight.run(["kubectl", "logs", pod, "--all-containers=true"], stdout=log)
  print(f"{len(pods)} logs, one per pod, under {fv['log_dir'].value}/")


def act(fv, action: str):
  preflight.require(fv, "name", "cluster", "project", "zone")
  name = preflight.check_name(fv["name"].value)
  if action == "delete":
    preflight.run(["xpk", "workload", "delete", *_xpk_where(fv), f"--workload={name}",
                   "--force", *(["--dry-run"] if fv["dry_run"].value else [])])
    return
  if action == "logs":
    fetch_logs(fv, name)
    return
  preflight.require(fv, "image")
  job = preflight.load_job(fv)  # checks, then the compile-only check
  # xpk's own --dry-run prints the commands and manifest instead of applying them.
  preflight.run(create_command(fv, job))
  if not fv["dry_run"].value:
    preflight.print_started(job, f"submitted {job.name}: {job.num_slices} x "
                                 f"{job.tpu.name}, {job.hosts} pods")


def main(argv: list[str]) -> int:
  return preflight.main(argv, __doc__, ACTIONS, define_flags, act)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
