"""The compile-only TPU check (aot/compile_check.py): the accelerator-type table, tiny
configs compiled for fake TPU topologies, a step that does not fit, bad input."""

import pathlib
import re
import subprocess
import sys

import pytest

from aot import compile_check
from sharding import topologies
from model import flops
from sharding.config import MeshConfig
from sharding.mesh import make_mesh
from trainer import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, topology, chips", [
    ("v5p-8", "v5p:2x2x1", 4),
    ("v5p-128", "v5p:4x4x4", 64),
    ("v5p-256", "v5p:4x4x8", 128),  # the naming trap: 128 chips, not 256
    ("v5e-1", "v5e:1x1", 1),
    ("v5e-8", "v5e:2x4", 8),
    ("v5e-16", "v5e:4x4", 16),
    ("v5e-256", "v5e:16x16", 256),
    ("v6e-64", "v6e:8x8", 64),
    ("v4-32", "v4:2x2x4", 16),
])
def test_accelerator_type_table(name, topology, chips):
  tpu = topologies.get(name)
  assert (tpu.topology_name, tpu.chips) == (topology, chips)
  chip = tpu.generation
  assert 0 < chip.usable_hbm_bytes < 1.1 * chip.hbm_bytes and chip.peak_bf16_flops > 1e14
  # Every TPU generation prices a roofline (aot/step_time.py) and has hosts.
  assert chip.hbm_bandwidth > 1e11 and chip.ici_link > 1e10 and chip.host_chips > 0


@pytest.mark.parametrize("name, slices", [("v4-32", 1), ("v5e-1", 1), ("v5p-16", 2)])
def test_topology_gives_one_device_per_chip(name, slices):
  devices = topologies.get(name).get_topology_desc(slices).devices
  assert len(devices) == topologies.get(name).chips * slices
  assert {d.platform for d in devices} == {"tpu"}


@pytest.mark.parametrize("name, ici", [
    ("v5e-256", dict(ici_data=8, ici_fsdp=32)),  # 32 does not map onto 16x16 whole
    ("v5p-128", dict(ici_data=1, ici_fsdp=32, ici_tensor=2)),
    ("v5p-128", dict(ici_data=1, ici_fsdp=16, ici_tensor=4)),
])
def test_meshes_over_topology_devices(name, ici):
  devices = topologies.get(name).get_topology_desc().devices
  mesh = make_mesh(MeshConfig(**ici), devices)
  assert mesh.devices.size == len(devices) and set(mesh.devices.flat) == set(devices)
  assert all(mesh.shape[key[4:]] == value for key, value in ici.items())


def test_unknown_accelerator_type_names_it_and_the_valid_ones():
  with pytest.raises(ValueError, match=r"'v5p-100'.*v5p-128.*v5e-256"):
    topologies.get("v5p-100")


def _tiny(batch=16, splash=False, **mesh):
  """The tiny Griffin; with `splash`, heads of 128 lanes and rows of one
  128-token block, shapes the splash kernel takes (two query heads)."""
  cd = config_lib.defaults()
  if splash:
    cd.model.width = 256
    cd.model.head_dim = 128
  cd.data.seq_len = 128 if splash else 64
  cd.data.global_batch_size = batch
  for name, value in mesh.items():
    cd.mesh[name] = value
  return config_lib.build(cd)


def _check_fits(report, config):
  assert report["fits"] and report["error"] is None, report
  for field in ("argument", "output", "generated_code", "peak", "total"):
    assert report[f"{field}_bytes"] > 0, field
  assert report["temp_bytes"] >= 0
  # The state is donated: its buffers are the outputs' too.
  assert 0 < report["alias_bytes"] <= report["output_bytes"]
  assert report["peak_bytes"] <= report["total_bytes"] < report["hbm_bytes"]
  B, T = config.data.global_batch_size, config.data.seq_len
  assert report["train_flops"] == flops.train_flops(config.model, B, T)
  assert report["train_flops"] < report["hardware_flops"]  # remat full recomputes
  assert report["xla_flops_per_device"] > 0
  text = compile_check.format_report(report)
  assert "peak" in text and "usable" in text and text.endswith("FITS")


@pytest.fixture(scope="module")
def tiny_report():
  """The tiny Griffin with the default scan_impl and attention_impl (auto,
  which must pick the Pallas kernels when compiling for TPU), tensor-parallel
  (64 RG-LRU channels a shard) on v5p-8: (config, report, StableHLO). One
  generation: the kernels lower through the same Mosaic path on v5e, whose
  compile the two-slice test checks (a TPU compile costs a minute of CI)."""
  config = _tiny(splash=True, ici_data=1, ici_fsdp=2, ici_tensor=2)
  assert config.model.scan_impl.value == config.model.attention_impl.value == "auto"
  stablehlo = compile_check.lower_train_step(config, "v5p-8").lowered.as_text()
  return config, compile_check.compile_report(config, "v5p-8"), stablehlo


def test_tiny_config_compiles_for_tpu_with_the_pallas_kernels(tiny_report):
  config, report, stablehlo = tiny_report
  _check_fits(report, config)
  assert "tpu_custom_call" in stablehlo  # the Mosaic kernels, not the interpreter
  # Splash attention inside the sharded train step: forward, dq and dkv.
  assert sorted(set(re.findall(r"splash_mqa_(fwd|dq|dkv)", stablehlo))) == ["dkv", "dq", "fwd"]
  assert report["mesh"] == {"data": 1, "fsdp": 2, "sequence": 1, "tensor": 2}
  assert (report["chips"], report["topology"]) == (4, "v5p:2x2x1")


def test_tiny_config_compiles_for_two_slices():
  config = _tiny(ici_data=1, ici_fsdp=-1, dcn_data=-1)
  report = compile_check.compile_report(config, "v5e-4", num_slices=2)
  assert report["mesh"] == {"data": 2, "fsdp": 4, "sequence": 1, "tensor": 1}
  assert report["chips"] == 8
  _check_fits(report, config)
  assert report["roofline_step_s"] == pytest.approx(report["hardware_flops"] / (8 * 197e12))


def test_step_that_does_not_fit_is_reported():
  # A 2.1B-parameter embedding (vocab 2^20 x width 2048) on one 16 GiB chip:
  # the f32 parameters and two Adam moments alone are 25 GB. One small layer
  # keeps the compile short.
  cd = config_lib.defaults()
  cd.model.vocab_size = 2**20
  cd.model.width = 2048
  cd.model.lru_width = 128
  cd.model.depth = 1
  cd.model.block_pattern = "R"
  cd.data.seq_len = 64
  cd.data.global_batch_size = 1
  report = compile_check.compile_report(config_lib.build(cd), "v5e-1")
  assert not report["fits"]
  assert "HBM" in report["error"]
  assert compile_check.format_report(report).splitlines()[-1].startswith("DOES NOT FIT")


def test_bad_input_fails_before_compile():
  with pytest.raises(ValueError, match="unknown TPU accelerator type 'v5e-3'"):
    compile_check.compile_report(_tiny(), "v5e-3")
  with pytest.raises(ValueError, match=r"global_batch_size=12 is not divisible by the 8 batch shards .* on 1 x v5e-8\); use a multiple of 8"):
    compile_check.compile_report(_tiny(batch=12), "v5e-8")
  with pytest.raises(ValueError, match="mesh.ici_fsdp=3"):
    compile_check.compile_report(_tiny(ici_data=1, ici_fsdp=3), "v5e-8")
  with pytest.raises(ValueError, match="num_slices=0"):
    compile_check.compile_report(_tiny(), "v5e-8", num_slices=0)
  with pytest.raises(ValueError, match="heads"):  # 2 query heads over tensor = 4
    compile_check.compile_report(_tiny(ici_data=2, ici_tensor=4), "v5e-8")


def test_command_line_exits_non_zero_when_the_step_does_not_fit():
  overrides = dict(vocab_size=2**20, width=2048, lru_width=128, depth=1, block_pattern="R")
  argv = [sys.executable, "-m", "aot.compile_check", "--config=configs/griffin_tiny.py",
          "--topology=v5e-1", "--config.data.seq_len=64", "--config.data.global_batch_size=1"]
  argv += [f"--config.model.{name}={value}" for name, value in overrides.items()]
  done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stderr[-2000:]
  assert "1 x v5e-1 (v5e:1x1)" in done.stdout
  assert done.stdout.splitlines()[-1].startswith("DOES NOT FIT: RESOURCE_EXHAUSTED")
