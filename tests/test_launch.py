"""Pod launchers (launch/tpu_vm.py, launch/gke.py) against fake gcloud, xpk and
kubectl: the exact commands of a 2-slice v5p-128 job, bad input refused before
any cloud command, and the compile-only check gating a submission."""

import json
import os
import pathlib
import stat
import sys
import tarfile

import pytest

from launch import gke, preflight, tpu_vm
from sharding import topologies

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE = "us-docker.pkg.dev/my-project/griffin/trainer:v1"
WORKDIR = "gs://my-bucket/runs/griffin-14b"
TRAIN = ("python -m trainer.train --config=configs/griffin_14b.py "
         f"--workdir={WORKDIR} --num_processes=0 --config.mesh.dcn_data=2")
JOB_14B = ["--config=configs/griffin_14b.py", "--config.mesh.dcn_data=2",
           "--tpu_type=v5p-128", "--num_slices=2", f"--workdir={WORKDIR}",
           "--name=griffin-14b", "--project=my-project", "--zone=us-east5-a"]
WHERE = ["--project=my-project", "--zone=us-east5-a"]

# One script for gcloud, xpk and kubectl: appends its argv as a JSON line, and
# answers the few calls whose output the launchers read.
_FAKE = """#!{python}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
  f.write(json.dumps([os.path.basename(sys.argv[0]), *args]) + "\\n")
def next_answer(variable):
  # The first of a file's answers; the last one repeats.
  with open(os.environ[variable]) as f:
    answers = f.read().split()
  with open(os.environ[variable], "w") as f:
    f.write(" ".join(answers[1:] or answers))
  return answers[0]
if args[:4] == ["compute", "tpus", "queued-resources", "describe"]:
  state = next_answer("FAKE_STATES")
  if state == "NOT_FOUND":
    sys.exit("ERROR: (gcloud) NOT_FOUND: queued resource not found")
  print(state)
if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and "--worker=0" in args:
  print(next_answer("FAKE_JOB").replace("_", " "))  # running, exited_0, gone
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
  shutil.copy(args[4], os.environ["FAKE_COPY"])
for arg in args:
  if arg.startswith("--output-directory="):
    for worker in range(2):
      with open(os.path.join(arg.split("=", 1)[1], f"{{worker}}.log"), "w") as f:
        f.write(f"worker {{worker}}\\n")
if args[:2] == ["get", "pods"]:
  print("griffin-14b-slice-job-0-0-a griffin-14b-slice-job-1-0-b", end="")
if args[:1] == ["logs"]:
  print("log of " + args[1])
"""


class FakeCloud:
  def __init__(self, directory: pathlib.Path):
    self.log = directory / "calls.jsonl"
    self.states = directory / "states"
    self.copy = directory / "copied.tar.gz"
    self.job = directory / "job"
    self.log.touch()

  def calls(self) -> list[list[str]]:
    return [json.loads(line) for line in self.log.read_text().splitlines()]

  def clear(self):
    self.log.write_text("")


@pytest.fixture
def cloud(tmp_path, monkeypatch) -> FakeCloud:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("gcloud", "xpk", "kubectl"):
    path = bin_dir / name
    path.write_text(_FAKE.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
  fake = FakeCloud(tmp_path)
  fake.states.write_text("WAITING_FOR_RESOURCES PROVISIONING ACTIVE")
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_LOG", str(fake.log))
  monkeypatch.setenv("FAKE_STATES", str(fake.states))
  monkeypatch.setenv("FAKE_COPY", str(fake.copy))
  monkeypatch.setenv("FAKE_JOB", str(fake.job))
  monkeypatch.chdir(ROOT)  # config paths are relative to the repository root
  return fake


def _ssh(node, command, *extra):
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *WHERE, "--worker=all",
          f"--command={command}", *extra]


@pytest.mark.parametrize("name, hosts, cloud_name", [
    ("v5p-8", 1, "v5p-8"), ("v5p-128", 16, "v5p-128"), ("v4-32", 4, "v4-32"),
    ("v5e-4", 1, "v5litepod-4"), ("v5e-8", 1, "v5litepod-8"),
    ("v5e-16", 4, "v5litepod-16"), ("v6e-256", 64, "v6e-256"),
])
def test_hosts_and_cloud_names(name, hosts, cloud_name):
  assert preflight.hosts_per_slice(topologies.get(name)) == hosts
  assert preflight.cloud_accelerator_type(name) == cloud_name


def test_tpu_vm_submit_two_slices_of_v5p_128(cloud, capsys):
  argv = ["tpu_vm", *JOB_14B, f"--image={IMAGE}", "--capacity=spot",
          "--service_account=trainer@my-project.iam.gserviceaccount.com",
          "--poll_interval_s=0", "--skip_aot_check", "submit"]
  assert tpu_vm.main(argv) == 0, capsys.readouterr().err
  describe = ["gcloud", "compute", "tpus", "queued-resources", "describe", "griffin-14b",
              *WHERE, "--format=value(state.state)"]
  pull = ("sudo gcloud auth configure-docker us-docker.pkg.dev --quiet && "
          f"sudo docker pull {IMAGE}")
  run = ("sudo docker rm -f griffin-14b >/dev/null 2>&1; sudo docker run -d "
         f"--name=griffin-14b --privileged --net=host {IMAGE} {TRAIN}")
  calls = cloud.calls()
  assert calls[:4] == [
      ["gcloud", "compute", "tpus", "queued-resources", "create", "griffin-14b", *WHERE,
       "--accelerator-type=v5p-128", "--runtime-version=v2-alpha-tpuv5",
       "--node-count=2", "--node-prefix=griffin-14b",
       "--service-account=trainer@my-project.iam.gserviceaccount.com",
       "--scopes=https://www.googleapis.com/auth/cloud-platform", "--spot"],
      describe, describe, describe]  # WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE
  # Each round runs on both slices at once: order within a round is free.
  assert sorted(calls[4:6]) == [_ssh("griffin-14b-0", pull), _ssh("griffin-14b-1", pull)]
  assert sorted(calls[6:]) == [_ssh("griffin-14b-0", run), _ssh("griffin-14b-1", run)]
  assert "started on 32 hosts" in capsys.readouterr().out


def test_the_local_tier_is_a_host_directory_the_container_mounts(cloud, capsys):
  """TPU VMs: docker binds the host's directory (its own /dev/shm is 64 MB and
  goes with the container); GKE: the node's multi-tier checkpointing ramdisk."""
  local = ["--config.checkpoint.local_dir=/dev/shm/griffin",
           "--config.checkpoint.local_every_steps=20"]
  train = f"{TRAIN} {' '.join(local)}"
  argv = ["tpu_vm", *JOB_14B, *local, f"--image={IMAGE}", "--poll_interval_s=0",
          "--skip_aot_check", "submit"]
  assert tpu_vm.main(argv) == 0, capsys.readouterr().err
  run = ("sudo docker rm -f griffin-14b >/dev/null 2>&1; sudo docker run -d --name=griffin-14b "
         f"--privileged --net=host -v /dev/shm/griffin:/dev/shm/griffin {IMAGE} {train}")
  assert _ssh("griffin-14b-0", run) in cloud.calls()
  cloud.clear()
  assert gke.main(["gke", *JOB_14B, *local, "--cluster=griffin", f"--image={IMAGE}",
                   "--skip_aot_check", "submit"]) == 0, capsys.readouterr().err
  assert cloud.calls() == [
      ["xpk", "workload", "create", "--cluster=griffin", *WHERE, "--workload=griffin-14b",
       f"--docker-image={IMAGE}", "--tpu-type=v5p-128", "--num-slices=2",
       "--max-restarts=10", "--mtc-enabled", "--ramdisk-directory=/dev/shm/griffin",
       f"--command={train}"]]
  cloud.clear()
  assert gke.main(["gke", *JOB_14B, "--config.checkpoint.local_dir=griffin_local",
                   "--config.checkpoint.local_every_steps=20", "--cluster=griffin",
                   f"--image={IMAGE}", "--skip_aot_check", "submit"]) == 1
  assert ("--config.checkpoint.local_dir='griffin_local' must be an absolute path for a "
          "pod job") in capsys.readouterr().err
  assert cloud.calls() == []


def test_tpu_vm_logs_one_file_per_worker_and_delete(cloud, tmp_path):
  logs = tmp_path / "logs"
  common = ["tpu_vm", "--name=griffin-14b", *WHERE, "--num_slices=2", f"--image={IMAGE}"]
  assert tpu_vm.main([*common, f"--log_dir={logs}", "logs"]) == 0
  assert tpu_vm.main([*common, "delete"]) == 0
  show = "sudo docker logs griffin-14b 2>&1"
  assert cloud.calls() == [
      _ssh("griffin-14b-0", show, f"--output-directory={logs}/griffin-14b-0"),
      _ssh("griffin-14b-1", show, f"--output-directory={logs}/griffin-14b-1"),
      ["gcloud", "compute", "tpus", "queued-resources", "delete", "griffin-14b", *WHERE,
       "--force", "--quiet"]]
  assert (logs / "griffin-14b-1" / "1.log").read_text() == "worker 1\n"


def test_tpu_vm_without_image_copies_this_checkout(cloud):
  # One slice is a plain node id; without --image the code goes as a tarball.
  argv = ["tpu_vm", "--config=configs/griffin_tiny.py", "--tpu_type=v5e-4",
          "--workdir=gs://my-bucket/runs/tiny", "--name=tiny", *WHERE,
          "--poll_interval_s=0", "--skip_aot_check", "create"]
  cloud.states.write_text("ACTIVE")
  assert tpu_vm.main(argv) == 0
  create, describe, copy, install = cloud.calls()
  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "tiny",
                    *WHERE, "--accelerator-type=v5litepod-4",
                    "--runtime-version=v2-alpha-tpuv5-lite", "--node-id=tiny"]
  assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert copy[5].endswith("griffin.tar.gz")
  assert copy[6:] == ["tiny:griffin.tar.gz", *WHERE, "--worker=all"]
  assert install[:6] == _ssh("tiny", "")[:6] and "pip install" in install[-1]
  with tarfile.open(cloud.copy) as tar:
    names = tar.getnames()
  assert {"pyproject.toml", "configs/griffin_tiny.py", "trainer/train.py",
          "aot/compile_check.py"} <= set(names)
  assert not [n for n in names if "__pycache__" in n or n.startswith("tests")]


def test_tpu_vm_stops_when_the_queued_resource_fails(cloud, capsys):
  cloud.states.write_text("WAITING_FOR_RESOURCES FAILED")
  argv = ["tpu_vm", *JOB_14B, f"--image={IMAGE}", "--poll_interval_s=0",
          "--skip_aot_check", "submit"]
  assert tpu_vm.main(argv) == 1
  assert "queued resource griffin-14b is FAILED" in capsys.readouterr().err
  assert [call[4] for call in cloud.calls()] == ["create", "describe", "describe"]


SUPERVISE = ["tpu_vm", *JOB_14B, f"--image={IMAGE}", "--poll_interval_s=0",
             "--restart_backoff_s=0", "--skip_aot_check", "supervise"]


def _steps(calls) -> list[str]:
  """The supervisor's story: create/describe/delete of the queued resource,
  `pull`, `run` (both slices) and `status` (worker 0)."""
  story = []
  for call in calls:
    if call[3] == "queued-resources":
      story.append(call[4])
    else:
      command = call[-1]
      story.append("status" if "--worker=0" in call else
                   "pull" if "docker pull" in command else "run")
  return [s for i, s in enumerate(story) if i == 0 or s not in ("pull", "run")
          or story[i - 1] != s]  # one entry per round over the slices


def test_supervise_recreates_a_preempted_resource_and_reruns_the_job(cloud, capsys):
  cloud.states.write_text("NOT_FOUND ACTIVE ACTIVE SUSPENDED ACTIVE ACTIVE")
  cloud.job.write_text("running exited_0")
  assert tpu_vm.main(SUPERVISE) == 0, capsys.readouterr().err
  assert _steps(cloud.calls()) == [
      "describe", "create", "describe", "pull", "run",  # brought up
      "describe", "status",  # ACTIVE, running
      "describe", "delete", "create", "describe", "pull", "run",  # SUSPENDED: recreated
      "describe", "status"]  # exit 0
  out = capsys.readouterr().out
  assert "restart 1 of 20 in 0 s: queued resource griffin-14b is SUSPENDED" in out
  assert "finished (exit 0) after 1 restarts" in out


def test_supervise_reruns_a_crashed_job_and_stops_when_the_budget_is_spent(cloud, capsys):
  cloud.states.write_text("ACTIVE")
  cloud.job.write_text("running exited_1 gone")
  assert tpu_vm.main([*SUPERVISE[:-1], "--max_restarts=2", "supervise"]) == 1
  assert _steps(cloud.calls()) == ["describe", "status",  # already training: watch it
                                   "describe", "status", "run",  # exited 1: rerun
                                   "describe", "status", "run",  # gone: rerun
                                   "describe", "status"]
  assert ("gave up after 2 restarts (--max_restarts=2): the job on griffin-14b is not "
          "running") in capsys.readouterr().err


def test_supervise_gives_up_on_a_resource_that_fails_to_provision(cloud, capsys):
  cloud.states.write_text("NOT_FOUND WAITING_FOR_RESOURCES FAILED")
  assert tpu_vm.main([*SUPERVISE[:-1], "--max_restarts=1", "supervise"]) == 1
  assert _steps(cloud.calls()) == ["describe", "create", "describe", "describe",
                                   "delete", "create", "describe"]
  assert ("gave up after 1 restarts (--max_restarts=1): queued resource griffin-14b is "
          "FAILED; delete it") in capsys.readouterr().err


@pytest.mark.parametrize("dry_run", [False, True])
def test_gke_submit_two_slices_of_v5p_128(cloud, capsys, dry_run):
  argv = ["gke", *JOB_14B, "--cluster=griffin", f"--image={IMAGE}", "--skip_aot_check",
          *(["--dry_run"] if dry_run else []), "submit"]
  assert gke.main(argv) == 0, capsys.readouterr().err
  assert cloud.calls() == [
      ["xpk", "workload", "create", "--cluster=griffin", *WHERE, "--workload=griffin-14b",
       f"--docker-image={IMAGE}", "--tpu-type=v5p-128", "--num-slices=2",
       "--max-restarts=10", f"--command={TRAIN}", *(["--dry-run"] if dry_run else [])]]


def test_gke_logs_one_file_per_pod_and_delete(cloud, tmp_path):
  common = ["gke", "--name=griffin-14b", "--cluster=griffin", *WHERE]
  assert gke.main([*common, f"--log_dir={tmp_path}", "logs"]) == 0
  assert gke.main([*common, "delete"]) == 0
  pods = ["griffin-14b-slice-job-0-0-a", "griffin-14b-slice-job-1-0-b"]
  assert cloud.calls() == [
      ["gcloud", "container", "clusters", "get-credentials", "griffin",
       "--location=us-east5", "--project=my-project"],
      ["kubectl", "get", "pods", "-l", "jobset.sigs.k8s.io/jobset-name=griffin-14b",
       "-o", "jsonpath={.items[*].metadata.name}"],
      *[["kubectl", "logs", pod, "--all-containers=true"] for pod in pods],
      ["xpk", "workload", "delete", "--cluster=griffin", *WHERE,
       "--workload=griffin-14b", "--force"]]
  assert (tmp_path / f"{pods[1]}.log").read_text() == f"log of {pods[1]}\n"


def _without(flag):
  return [a for a in JOB_14B if not a.startswith(flag)]


@pytest.mark.parametrize("launcher, args, message", [
    ("tpu_vm", [*_without("--tpu_type"), "--tpu_type=v5p-100"],
     "unknown TPU accelerator type 'v5p-100'"),
    ("gke", [*_without("--config.mesh")],  # 2 slices, DCN sizes multiply to 1
     "multiply to 1, not to num_slices=2"),
    ("tpu_vm", [*_without("--tpu_type"), "--tpu_type=v5p-64"],  # 32 chips, fsdp 64
     "multiply to 64, which does not divide the 32 devices per slice"),
    ("gke", [*JOB_14B, "--config.mesh.ici_data=1", "--config.mesh.ici_fsdp=8",
             "--config.mesh.ici_tensor=8", "--config.data.global_batch_size=16"],
     "global_batch_size=16 is not divisible by the 32 processes (hosts) of 2 x v5p-128"),
    ("tpu_vm", [*_without("--workdir"), "--workdir=/tmp/griffin"],
     "--workdir='/tmp/griffin' must be a gs://BUCKET/PATH"),
    ("gke", [*_without("--name"), "--name=Griffin_14B"], "--name='Griffin_14B' must be"),
    ("tpu_vm", [f"--config={ROOT}/configs/griffin_14b.py", *_without("--config=")],
     "must be a path inside this repository, relative to its root"),
    ("gke", [*_without("--zone")], "missing flag(s) --zone"),
])
def test_bad_input_fails_before_any_cloud_command(cloud, capsys, launcher, args, message):
  main = {"tpu_vm": tpu_vm.main, "gke": gke.main}[launcher]
  extra = ["--cluster=griffin"] if launcher == "gke" else []
  assert main([launcher, *args, *extra, f"--image={IMAGE}", "submit"]) == 1
  assert message in capsys.readouterr().err
  assert cloud.calls() == []


def test_bad_flags_end_in_one_line(cloud):
  argv = ["tpu_vm", *JOB_14B, f"--image={IMAGE}", "submit"]
  with pytest.raises(SystemExit, match="^error: --config.model.widht=3: the config has no "
                     "field 'widht'; Did you mean \"width\""):
    tpu_vm.main([*argv[:-1], "--config.model.widht=3", "submit"])
  with pytest.raises(SystemExit, match="^error: Unknown command line flag 'tpu_typ'"):
    tpu_vm.main([*argv[:-1], "--tpu_typ=v5p-8", "submit"])
  assert cloud.calls() == []


def test_compile_check_gates_the_submission(cloud, capfd):
  """The real `python -m aot.compile_check`: a step that compiles is submitted; one
  that fails (2 query heads over tensor 4) submits nothing."""
  tiny = ["--config=configs/griffin_tiny.py", "--config.data.seq_len=64",
          "--workdir=gs://my-bucket/runs/tiny", "--name=tiny", "--cluster=griffin",
          *WHERE, f"--image={IMAGE}"]
  assert gke.main(["gke", *tiny, "--tpu_type=v5e-4", "--num_slices=2",
                   "--config.mesh.dcn_data=2", "submit"]) == 0
  out = capfd.readouterr().out
  assert "2 x v5e-4 (v5e:2x2): 8 chips" in out and "\nFITS\n" in out
  assert [call[:3] for call in cloud.calls()] == [["xpk", "workload", "create"]]
  assert gke.main(["gke", *tiny, "--tpu_type=v5e-8", "--config.mesh.ici_data=2",
                   "--config.mesh.ici_tensor=4", "submit"]) == 1
  assert "the compile-only check exited 1" in capfd.readouterr().err
  assert len(cloud.calls()) == 1
