"""infra/ checked offline: `terraform fmt`, the HCL parsed (hcl2), a checkov scan
with no failed check, and the container's pins and contents.

`terraform validate` is not here: it needs the Google provider downloaded."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from launch import tpu_vm
from sharding import topologies

try:
  import hcl2  # bc-python-hcl2, which checkov brings (pyproject.toml says why)
except ImportError as e:
  raise ImportError("tests/test_infra.py needs the test extra: pip install -e "
                    "'.[test]' (checkov and its hcl2)") from e

ROOT = pathlib.Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
EXAMPLES = sorted((INFRA / "examples").glob("*.tfvars"))
# Neither tool may phone home from a test: no version checks, no policy downloads.
OFFLINE = dict(os.environ, CHECKPOINT_DISABLE="1", CKV_SKIP_PACKAGE_UPDATE_CHECK="true")


def _terraform() -> dict[str, list]:
  """Every top-level block of infra/*.tf, merged by kind (resource, variable...)."""
  blocks: dict[str, list] = {}
  for path in sorted(INFRA.glob("*.tf")):
    with open(path) as f:
      for kind, entries in hcl2.load(f).items():
        blocks.setdefault(kind, []).extend(entries)
  return blocks


def _resources(kind: str) -> dict[str, dict]:
  """name -> body of every `resource "<kind>" "<name>"`."""
  return {name: body for entry in _terraform()["resource"] if kind in entry
          for name, body in entry[kind].items()}


def test_terraform_files_are_formatted():
  terraform = shutil.which("terraform")
  assert terraform, ("terraform is not on PATH: install Terraform >= 1.5 (CI machines "
                     "have it); `terraform fmt` needs no provider and no network.")
  done = subprocess.run([terraform, "fmt", "-check", "-recursive", "-diff", "infra"],
                        cwd=ROOT, env=OFFLINE, capture_output=True, text=True)
  assert done.returncode == 0, f"run `terraform fmt -recursive infra`:\n{done.stdout}"


def test_variables_and_bucket():
  variables = {name for entry in _terraform()["variable"] for name in entry}
  assert {"project", "region", "zone", "tpu_type", "num_slices", "bucket_name",
          "checkpoint_retention_days"} <= variables
  bucket = _resources("google_storage_bucket")["data"]
  assert bucket["uniform_bucket_level_access"] == [True]
  assert bucket["public_access_prevention"] == ["enforced"]
  assert bucket["soft_delete_policy"] == [{"retention_duration_seconds": [0]}]
  old_runs = bucket["dynamic"][0]["lifecycle_rule"]["content"][0]
  assert old_runs["condition"][0]["age"] == ["${var.checkpoint_retention_days}"]
  assert old_runs["condition"][0]["matches_prefix"] == [["${var.runs_prefix}"]]
  assert old_runs["action"][0]["type"] == ["Delete"]


def test_service_accounts_have_least_privilege():
  assert set(_resources("google_service_account")) == {"trainer", "gke_nodes"}
  # Project-wide: telemetry and the GKE node role only; storage on the bucket.
  project_roles = set(re.findall(r"roles/[\w.]+",
                                 json.dumps(_resources("google_project_iam_member"))))
  assert project_roles == {"roles/logging.logWriter", "roles/monitoring.metricWriter",
                           "roles/container.defaultNodeServiceAccount"}
  text = "".join(path.read_text() for path in INFRA.glob("*.tf"))
  assert not re.search(r"roles/(owner|editor|[a-z.]*admin)\b", text, re.IGNORECASE)
  assert "roles/storage.objectUser" in text and "google_storage_bucket_iam_member" in text


def test_gke_node_pools_follow_the_accelerator_table():
  pools = _resources("google_container_node_pool")
  assert pools["tpu"]["count"] == ["${var.create_gke_cluster ? var.num_slices : 0}"]
  assert pools["tpu"]["node_count"] == ["${local.hosts_per_slice}"]
  local = {k: v[0] for entry in _terraform()["locals"] for k, v in entry.items()
           if not k.startswith("__")}  # hcl2 adds __start_line__ and __end_line__
  tpus = {name: g for name, g in topologies.GENERATIONS.items() if g.shapes}
  for name, generation in tpus.items():
    table = local["topology_3d" if name in ("v4", "v5p") else "topology_2d"]
    assert table == {str(chips): shape for chips, shape in generation.shapes.items()}
  assert set(local["machine_family"]) == set(tpus)


def test_the_local_tier_ramdisk_is_off_unless_sized():
  """GKE's multi-tier checkpointing addon (launch/gke.py --mtc-enabled) only with
  multi_tier_checkpointing_ramdisk, and its node RAM disk as an output to apply."""
  cluster = _resources("google_container_cluster")["griffin"]
  addon = cluster["addons_config"][0]["dynamic"][0]["high_scale_checkpointing_config"]
  assert addon["for_each"] == ['${var.multi_tier_checkpointing_ramdisk == "" ? [] : [1]}']
  assert addon["content"] == [{"enabled": [True]}]
  output = next(entry["checkpoint_configuration"] for entry in _terraform()["output"]
                if "checkpoint_configuration" in entry)
  for expected in ("checkpointing.gke.io/v1", "CheckpointConfiguration",
                   "local.tpu_machine_type", "var.multi_tier_checkpointing_ramdisk"):
    assert expected in output["value"][0]


@pytest.mark.parametrize("tfvars", EXAMPLES, ids=lambda p: p.stem)
def test_checkov_finds_no_failed_check(tfvars):
  checkov = pathlib.Path(sys.executable).with_name("checkov")
  assert checkov.exists(), f"{checkov} missing: pip install -e '.[test]' installs checkov"
  done = subprocess.run(
      [str(checkov), "--directory", "infra", "--var-file", str(tfvars.relative_to(ROOT)),
       "--skip-download", "--quiet", "--compact", "--output", "json"],
      cwd=ROOT, env=OFFLINE, capture_output=True, text=True, timeout=300)
  reports = json.loads(done.stdout)
  reports = reports if isinstance(reports, list) else [reports]
  summary = {r["check_type"]: r["summary"] for r in reports}
  assert set(summary) == {"terraform", "dockerfile"}, done.stderr[-2000:]
  failed = [(c["check_id"], c["resource"]) for r in reports
            for c in r["results"]["failed_checks"]]
  assert not failed, failed
  assert all(s["passed"] > 10 for s in summary.values()), summary


def test_every_checkov_skip_says_why():
  skips = re.findall(r"checkov:skip=(\S+?):(.*)", "".join(
      p.read_text() for p in [*INFRA.glob("*.tf"), INFRA / "Dockerfile"]))
  assert skips
  assert all(len(reason.strip()) > 30 for _, reason in skips), skips


def test_dockerfile_pins_its_base_and_runs_as_a_user():
  text = (INFRA / "Dockerfile").read_text()
  assert re.search(r"^FROM python:3\.11\.\d+-slim-\w+$", text, re.MULTILINE)
  users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
  assert users and users[-1] not in ("root", "0")
  copied = set(re.findall(r"^COPY (\S+)/ \1/$", text, re.MULTILINE))
  copied |= set(re.findall(r"^COPY (pyproject\.toml) (README\.md) \./$", text,
                           re.MULTILINE)[0])
  assert copied == set(tpu_vm.SOURCE)  # the same code as the TPU VM tarball
  ignore = (ROOT / ".dockerignore").read_text().splitlines()
  included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
  assert included == set(tpu_vm.SOURCE) | {"infra/requirements.txt"}


def test_image_pins_satisfy_pyproject():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  pins = {}
  for line in (INFRA / "requirements.txt").read_text().splitlines():
    if line and not line.startswith("#"):
      name, version = line.split("==")
      pins[canonicalize_name(name)] = version
  wanted = [*project["dependencies"], *project["optional-dependencies"]["tpu"]]
  # The compile-only check's libtpu (test extra) is the one the image runs.
  wanted += [r for r in project["optional-dependencies"]["test"] if "libtpu" in r]
  for text in wanted:
    requirement = Requirement(text)
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{name} is not pinned in infra/requirements.txt"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"infra/requirements.txt pins {name}=={pins[name]}, outside {text!r}: "
        "regenerate it (the command is at its top)")
  assert "libtpu" in pins
