"""The config system: config files, validation messages, command-line overrides."""

import ast
import dataclasses
import pathlib
import subprocess
import sys

from absl import flags
import pytest

from common import config_flag
from model.config import BlockType, ModelConfig, ScanImpl, Remat
from pipeline.config import DataConfig
from sharding.config import MeshConfig
from trainer import config as config_lib

# ml_collections loads config files with the deprecated `load_module()`.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((ROOT / "configs").glob("*.py"))


def _parse(monkeypatch, *argv):
  """Runs absl flag parsing on an isolated flag set; returns the ConfigDict."""
  argv = ["prog", *argv]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides here.
  flag_values = flags.FlagValues()
  holder = config_flag.define_config_flag(flag_values=flag_values)
  flag_values(argv)
  return holder.value


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_file_loads_and_documents_its_run(monkeypatch, path):
  config = config_lib.build(_parse(monkeypatch, f"--config={path}"))
  assert config.model.width > 0
  doc = ast.get_docstring(ast.parse(path.read_text()))
  assert f"--config=configs/{path.name}" in doc
  assert "Expected:" in doc


def test_config_files_build_the_three_families(monkeypatch):
  built = {path.stem: config_lib.build(_parse(monkeypatch, f"--config={path}"))
           for path in CONFIG_FILES}
  r, a = BlockType.RECURRENT, BlockType.ATTENTION
  assert built["griffin_tiny"].model.block_pattern == (r, r, a)
  assert built["hawk_tiny"].model.block_pattern == (r,)
  assert built["mqa_tiny"].model.block_pattern == (a,)
  assert built["mqa_tiny"].model.attention_window is None


def test_defaults_build_to_dataclass_defaults():
  config = config_lib.build(config_lib.defaults())
  assert config.model == ModelConfig(vocab_size=256, width=128, depth=3,
                                     lru_width=128, head_dim=64, gate_blocks=4,
                                     attention_window=32)
  # The tiny byte-level default model reads bytes, not the tokenized corpus.
  assert config.mesh == MeshConfig()
  assert config.data == DataConfig(dataset="stdlib_bytes")
  assert config.optimizer == config_lib.OptimizerConfig()
  assert config.checkpoint == config_lib.CheckpointConfig()
  assert config.run == config_lib.RunConfig()


def test_float_fields_stay_float_in_the_dict():
  # An int default would make the ConfigDict field int-typed and reject
  # `--config.optimizer.learning_rate=3e-4`.
  cd = config_lib.defaults()
  config = config_lib.build(cd)
  for section in dataclasses.fields(config):
    for field in dataclasses.fields(getattr(config, section.name)):
      if field.type is float:
        assert isinstance(cd[section.name][field.name], float), field.name


@pytest.mark.parametrize("model_config", [
    ModelConfig(vocab_size=256, width=256, depth=12, lru_width=384),
    ModelConfig(vocab_size=256, width=128, depth=6, lru_width=128, head_dim=64,
                gate_blocks=4, block_pattern=(BlockType.RECURRENT,),
                scan_impl=ScanImpl.ASSOCIATIVE, remat=Remat.SAVE_MATMULS),
    ModelConfig(vocab_size=256, width=128, depth=3, lru_width=128, head_dim=64,
                block_pattern=(BlockType.ATTENTION,), attention_window=None),
], ids=["griffin", "hawk", "mqa"])
def test_model_config_dict_round_trips(model_config):
  cd = config_lib.defaults()
  cd.model = config_lib.model_config_dict(model_config)
  assert config_lib.build(cd).model == model_config


BAD_VALUES = [
    ("model", "width", 100),  # not a multiple of head_dim=64
    ("model", "lru_width", 130),  # not divisible by gate_blocks=4
    ("model", "head_dim", 30),
    ("model", "attention_window", 0),
    ("model", "attention_window", "wide"),
    ("model", "block_pattern", "RXA"),
    ("model", "block_pattern", ""),
    ("model", "depth", 0),
    ("model", "vocab_size", -1),
    ("model", "scan_impl", "fast"),
    ("model", "remat", "sometimes"),
    ("model", "a_init", "zeros"),
    ("model", "compute_dtype", "float16"),
    ("model", "norm_eps", 0.0),
    ("mesh", "ici_fsdp", 0),
    ("mesh", "ici_tensor", -2),
    ("mesh", "dcn_fsdp", 0),
    ("mesh", "ici_fsdp", -1),  # a second -1 beside ici_data=-1
    ("data", "seq_len", 0),
    ("data", "global_batch_size", 0),
    ("data", "worker_count", -1),
    ("data", "shuffle_seed", -1),
    ("data", "dataset", ""),
    ("data", "text_feature", ""),
    ("optimizer", "learning_rate", -1e-3),
    ("optimizer", "learning_rate", 0.0),
    ("optimizer", "b1", 1.0),
    ("optimizer", "b2", 1.0),
    ("optimizer", "b2", -0.1),
    ("optimizer", "eps", 0.0),
    ("optimizer", "weight_decay", -0.1),
    ("optimizer", "grad_clip_norm", -1.0),
    ("optimizer", "end_lr_fraction", 1.5),
    ("optimizer", "warmup_steps", -1),
    ("optimizer", "warmup_steps", 2000),  # more than run.steps=1000
    ("optimizer", "decay_steps", -1),
    ("optimizer", "grad_accum_steps", 0),
    ("optimizer", "grad_accum_steps", 3),  # does not divide the batch of 8
    ("optimizer", "z_loss", -1.0),
    ("checkpoint", "save_every_steps", 0),
    ("checkpoint", "max_to_keep", 0),
    ("checkpoint", "keep_period", -1),
    ("run", "steps", 0),
    ("run", "seed", -1),
    ("run", "log_every_steps", 0),
    ("run", "eval_every_steps", -1),
    ("run", "eval_steps", 0),
]


@pytest.mark.parametrize("section,field,value", BAD_VALUES,
                         ids=[f"{s}.{f}={v!r}" for s, f, v in BAD_VALUES])
def test_bad_value_is_rejected_naming_field_and_value(section, field, value):
  cd = config_lib.defaults()
  cd[section][field] = value
  with pytest.raises(ValueError) as error:
    config_lib.build(cd)
  assert f"{section}.{field}=" in str(error.value)
  assert repr(value) in str(error.value) or str(value) in str(error.value)


@pytest.mark.parametrize("make", [
    lambda: MeshConfig(dcn_data=-1, dcn_tensor=-1),
    lambda: MeshConfig(ici_data=True),
    lambda: DataConfig(seq_len=1.5),
    lambda: config_lib.OptimizerConfig(learning_rate=float("nan")),
    lambda: config_lib.OptimizerConfig(b1="0.9"),
    lambda: config_lib.CheckpointConfig(async_save=1),
])
def test_bad_dataclass_argument_is_rejected(make):
  with pytest.raises(ValueError, match=r"^(mesh|data|optimizer|checkpoint)\.\w+="):
    make()


def test_unknown_key_names_it_and_lists_valid_keys():
  cd = config_lib.defaults()
  with cd.unlocked():
    cd.optimizer.lr = 0.1
  with pytest.raises(ValueError, match=r"optimizer\.lr.*learning_rate"):
    config_lib.build(cd)


def test_missing_or_unknown_section_is_rejected():
  cd = config_lib.defaults()
  with cd.unlocked():
    del cd["run"]
  with pytest.raises(ValueError, match="'run'"):
    config_lib.build(cd)
  cd = config_lib.defaults()
  with cd.unlocked():
    cd.trainer = {"steps": 1}
  with pytest.raises(ValueError, match="trainer"):
    config_lib.build(cd)


@pytest.mark.parametrize("mesh,num_devices,num_slices,sizes", [
    (MeshConfig(), 8, 1, {"data": 8, "fsdp": 1, "sequence": 1, "tensor": 1}),
    (MeshConfig(ici_fsdp=2, ici_tensor=2), 8, 1,
     {"data": 2, "fsdp": 2, "sequence": 1, "tensor": 2}),
    (MeshConfig(ici_data=1, ici_fsdp=-1), 8, 1, {"data": 1, "fsdp": 8, "sequence": 1, "tensor": 1}),
    (MeshConfig(dcn_data=-1), 16, 2, {"data": 16, "fsdp": 1, "sequence": 1, "tensor": 1}),
    (MeshConfig(ici_fsdp=-1, ici_data=1, dcn_data=2), 16, 2,
     {"data": 2, "fsdp": 8, "sequence": 1, "tensor": 1}),
    (MeshConfig(ici_data=2, ici_sequence=-1), 8, 1,
     {"data": 2, "fsdp": 1, "sequence": 4, "tensor": 1}),
])
def test_mesh_resolves(mesh, num_devices, num_slices, sizes):
  assert mesh.resolve(num_devices, num_slices) == sizes


@pytest.mark.parametrize("mesh,num_devices,num_slices,match", [
    (MeshConfig(ici_data=2, ici_fsdp=2), 8, 1, r"mesh\.ici_data=2.*\b8 devices"),
    (MeshConfig(ici_fsdp=3), 8, 1, r"mesh\.ici_fsdp=3.*\b8 devices"),
    (MeshConfig(), 16, 2, r"mesh\.dcn_data=1.*num_slices=2"),
    (MeshConfig(), 8, 3, r"num_devices=8 .*num_slices=3"),
])
def test_mesh_that_does_not_fit_the_devices_is_rejected(mesh, num_devices,
                                                         num_slices, match):
  with pytest.raises(ValueError, match=match):
    mesh.resolve(num_devices, num_slices)


def test_command_line_overrides_reach_the_built_config(monkeypatch):
  cd = _parse(monkeypatch, f"--config={ROOT / 'configs/griffin_tiny.py'}",
              "--config.model.width=256", "--config.model.attention_window=None",
              "--config.model.scan_impl=associative",
              "--config.model.block_pattern=RA",
              "--config.optimizer.learning_rate=1e-3")
  model = config_lib.build(cd).model
  assert model.width == 256 and model.attention_window is None
  assert model.scan_impl is ScanImpl.ASSOCIATIVE
  assert model.block_pattern == (BlockType.RECURRENT, BlockType.ATTENTION)
  assert config_lib.build(cd).optimizer.learning_rate == 1e-3
  cd = _parse(monkeypatch, f"--config={ROOT / 'configs/mqa_tiny.py'}",
              "--config.model.attention_window=64")
  assert config_lib.build(cd).model.attention_window == 64


def test_bad_enum_string_from_command_line_fails_in_build(monkeypatch):
  cd = _parse(monkeypatch, f"--config={ROOT / 'configs/smoke.py'}",
              "--config.model.remat=sometimes")
  with pytest.raises(ValueError, match=r"model\.remat='sometimes'.*save_matmuls"):
    config_lib.build(cd)


@pytest.mark.parametrize("override,error", [
    ("--config.model.widht=3", AttributeError),
    ("--config.modle.width=3", KeyError),
])
def test_misspelled_override_fails_at_parsing(monkeypatch, override, error):
  with pytest.raises(error, match="Did you mean"):
    _parse(monkeypatch, f"--config={ROOT / 'configs/smoke.py'}", override)


@pytest.mark.parametrize("path", ["sharding/config.py", "pipeline/config.py",
                                  "trainer/config.py", "model/config.py"])
def test_config_modules_do_not_import_jax(path):
  tree = ast.parse((ROOT / path).read_text())
  imported = [alias.name for node in ast.walk(tree)
              if isinstance(node, ast.Import) for alias in node.names]
  imported += [node.module for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module]
  assert not [m for m in imported if m.split(".")[0] in ("jax", "flax", "optax")]


def test_mesh_and_data_configs_load_without_jax():
  code = ("import sys, sharding.config, pipeline.config; "
          "assert 'jax' not in sys.modules, 'jax was imported'")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
