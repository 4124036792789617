"""The run's frozen configs, and the loader from a config file's ConfigDict.

A config file's `get_config()` returns `defaults()` with overrides; absl parses
it (locked, so a misspelled `--config.a.b=v` fails) and `build` turns it into
one frozen, validated dataclass per concern. No JAX import: every check here
runs before anything compiles.
"""

import dataclasses
import enum
import math

from ml_collections import config_dict

from common.checks import check_ints
from model.config import AInit, AttentionImpl, BlockType, ModelConfig, Remat, ScanImpl
from pipeline.config import DataConfig
from sharding.config import MeshConfig


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with linear warmup, cosine decay, clipping and accumulation."""

  learning_rate: float = 3e-3  # peak, reached after warmup
  warmup_steps: int = 100
  decay_steps: int = 0  # 0 = run.steps
  end_lr_fraction: float = 0.1  # final lr = end_lr_fraction * learning_rate
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  grad_clip_norm: float = 1.0  # 0 = off
  grad_accum_steps: int = 1  # micro-batches per step
  z_loss: float = 0.0  # weight of log(Z)^2 in the loss; 0 = off
  # Warn at start when learning_rate is outside the band that the sweep's
  # fitted rule gives for the model's width (trainer/lr_rule.py); False: the
  # rate is intended.
  lr_rule_warning: bool = True

  def __post_init__(self):
    check_ints("optimizer", self, 0, "warmup_steps", "decay_steps")
    check_ints("optimizer", self, 1, "grad_accum_steps")
    for name, ok, valid in (
        ("learning_rate", lambda v: v > 0, "> 0"),
        ("end_lr_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("b1", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("b2", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("eps", lambda v: v > 0, "> 0"),
        ("weight_decay", lambda v: v >= 0, ">= 0"),
        ("grad_clip_norm", lambda v: v >= 0, ">= 0 (0 turns clipping off)"),
        ("z_loss", lambda v: v >= 0, ">= 0 (0 turns it off)")):
      value = getattr(self, name)
      if (not isinstance(value, (int, float)) or isinstance(value, bool)
          or not math.isfinite(value) or not ok(value)):
        raise ValueError(f"optimizer.{name}={value!r} must be a number {valid}.")
    if not isinstance(self.lr_rule_warning, bool):
      raise ValueError(f"optimizer.lr_rule_warning={self.lr_rule_warning!r} must be a bool.")


class OnCorrupt(enum.Enum):
  """What resuming does with a step that fails its checksums or cannot be read."""

  REFUSE = "refuse"  # stop, naming the step and what would work
  FALLBACK = "fallback"  # set it aside (<step>.corrupt) and resume from the newest intact step


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When Orbax saves, and which checkpoints it keeps."""

  save_every_steps: int = 500
  max_to_keep: int = 3  # the most recent ones
  keep_period: int = 0  # also keep every step divisible by this; 0 = off
  async_save: bool = True
  # OCDBT packs all arrays into a few files (fast on GCS). The GCS emulator
  # the tests use answers OCDBT's conditional writes with generations that
  # tensorstore rejects ("Malformed StorageGeneration"), so they turn it off.
  use_ocdbt: bool = True
  # On SIGTERM (preemption) the run saves at the next step boundary and has
  # this many seconds, counted from the signal, to commit that step: it then
  # exits 0, or exits 1 saying the step did not commit in time. Set it a
  # little below the scheduler's notice (GKE: terminationGracePeriodSeconds).
  # A run stopping on an error also waits at most this long for its last save.
  preemption_grace_s: float = 30.0
  on_corrupt: OnCorrupt = OnCorrupt.REFUSE
  # The fast tier (trainer/local_tier.py): every `local_every_steps` steps
  # (0 = off) each host writes its shards under `local_dir`, a host-local
  # path (a RAM disk such as /dev/shm, or local SSD), and copies the previous
  # host's; the gs:// tier is still written every `save_every_steps`. A
  # restart resumes from the newer of the two tiers.
  local_dir: str = ""
  local_every_steps: int = 0
  local_max_to_keep: int = 2

  def __post_init__(self):
    check_ints("checkpoint", self, 1, "save_every_steps", "max_to_keep", "local_max_to_keep")
    check_ints("checkpoint", self, 0, "keep_period", "local_every_steps")
    if not isinstance(self.local_dir, str):
      raise ValueError(f"checkpoint.local_dir={self.local_dir!r} must be a path.")
    if self.local_dir.startswith("gs://"):
      raise ValueError(f"checkpoint.local_dir={self.local_dir} must be host-local (a RAM "
                       "disk such as /dev/shm/griffin, or local SSD); the gs:// tier is "
                       "the --workdir")
    if bool(self.local_dir) != bool(self.local_every_steps):
      raise ValueError(
          f"checkpoint.local_dir={self.local_dir!r} and checkpoint.local_every_steps="
          f"{self.local_every_steps} go together: set both (e.g. /dev/shm/griffin and 50) "
          "for the local tier, or neither")
    if not isinstance(self.async_save, bool):
      raise ValueError(f"checkpoint.async_save={self.async_save!r} must be a bool.")
    if not isinstance(self.on_corrupt, OnCorrupt):
      raise ValueError(f"checkpoint.on_corrupt={self.on_corrupt!r} is not one of "
                       f"{[e.value for e in OnCorrupt]}.")
    grace = self.preemption_grace_s
    if (not isinstance(grace, (int, float)) or isinstance(grace, bool)
        or not math.isfinite(grace) or grace <= 0):
      raise ValueError(f"checkpoint.preemption_grace_s={grace!r} must be a number of "
                       "seconds > 0.")


class NonFinite(enum.Enum):
  """What a step whose loss or gradient norm is NaN or Inf does to the run."""

  HALT = "halt"  # stop; the last committed checkpoint is the last good state
  SKIP = "skip"  # drop that update (params and optimizer state kept), count it


class SpikeAction(enum.Enum):
  """What a loss spike does (trainer/spikes.py)."""

  SKIP = "skip"  # drop that update, as a non-finite one
  ROLLBACK = "rollback"  # restore the newest committed step before it, skip its batches


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Length of the run, its seed, and how often it logs and evaluates."""

  steps: int = 1000
  # Training tokens (0 = none): run.steps must then be token_budget //
  # (data.global_batch_size x data.seq_len); recipe configs derive it so.
  token_budget: int = 0
  seed: int = 0
  log_every_steps: int = 10
  eval_every_steps: int = 0  # 0 = no evaluation during training
  eval_steps: int = 10  # batches per evaluation
  on_non_finite: NonFinite = NonFinite.HALT
  max_skipped_steps: int = 10  # with SKIP: halt when more steps than this were skipped
  lm_eval_every_steps: int = 0  # 0 = no lm-eval during training (docs/evaluation.md)
  lm_eval_tasks: str = ""  # comma-separated lm-eval tasks or suites, e.g. "piqa,hellaswag"
  lm_eval_include_path: str = ""  # a folder of local task YAMLs
  lm_eval_builtin_tasks: bool = True  # False: only those YAMLs (skips indexing lm-eval's ~15k)
  lm_eval_limit: int = 0  # documents per task; 0 = all
  # Loss-spike guard (trainer/spikes.py): a loss or gradient norm above
  # spike_factor x its running median over spike_window steps is a spike.
  spike_factor: float = 0.0  # 0 = off; else > 1
  spike_window: int = 100
  spike_action: SpikeAction = SpikeAction.SKIP
  max_spikes: int = 10  # stop the run when more steps than this were spikes
  # JAX's persistent compilation cache in <workdir>/compilation_cache (gs://
  # too), so a restarted run loads its programs instead of compiling them;
  # a cache already configured (JAX_COMPILATION_CACHE_DIR) is left as it is.
  compilation_cache: bool = True

  def __post_init__(self):
    check_ints("run", self, 1, "steps", "log_every_steps", "eval_steps")
    check_ints("run", self, 1, "spike_window")
    check_ints("run", self, 0, "seed", "token_budget", "eval_every_steps", "max_skipped_steps",
               "lm_eval_every_steps", "lm_eval_limit", "max_spikes")
    factor = self.spike_factor
    if (not isinstance(factor, (int, float)) or isinstance(factor, bool)
        or not math.isfinite(factor) or not (factor == 0 or factor > 1)):
      raise ValueError(f"run.spike_factor={factor!r} must be 0 (off) or a number > 1, "
                       "e.g. 3: a loss above 3x its running median is a spike.")
    if not isinstance(self.compilation_cache, bool):
      raise ValueError(f"run.compilation_cache={self.compilation_cache!r} must be a bool.")
    if not isinstance(self.spike_action, SpikeAction):
      raise ValueError(f"run.spike_action={self.spike_action!r} is not one of "
                       f"{[e.value for e in SpikeAction]}.")
    if self.lm_eval_every_steps and not str(self.lm_eval_tasks).strip(" ,"):
      raise ValueError(f"run.lm_eval_every_steps={self.lm_eval_every_steps} needs run.lm_eval_tasks.")
    if not isinstance(self.on_non_finite, NonFinite):
      raise ValueError(f"run.on_non_finite={self.on_non_finite!r} is not one of "
                       f"{[e.value for e in NonFinite]}.")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one run needs; each part goes only to the code that uses it."""

  model: ModelConfig
  mesh: MeshConfig
  data: DataConfig
  optimizer: OptimizerConfig
  checkpoint: CheckpointConfig
  run: RunConfig

  def __post_init__(self):
    for name, section_type in _SECTIONS.items():
      if not isinstance(getattr(self, name), section_type):
        raise ValueError(f"{name}={getattr(self, name)!r} must be a "
                         f"{section_type.__name__}.")
    # Before any mesh exists (`sharding/rules.py` checks the mesh's share).
    if self.data.global_batch_size % self.optimizer.grad_accum_steps:
      raise ValueError(f"data.global_batch_size={self.data.global_batch_size} is "
                       "not divisible by optimizer.grad_accum_steps="
                       f"{self.optimizer.grad_accum_steps}; micro-batches must be "
                       "equal.")
    tokens_per_step = self.data.global_batch_size * self.data.seq_len
    if self.run.token_budget and self.run.steps != self.run.token_budget // tokens_per_step:
      raise ValueError(
          f"run.steps={self.run.steps} and run.token_budget={self.run.token_budget:,} "
          f"contradict: at data.global_batch_size x data.seq_len = "
          f"{self.data.global_batch_size} x {self.data.seq_len} = {tokens_per_step:,} tokens "
          f"a step the budget is {self.run.token_budget // tokens_per_step:,} steps; set "
          "that run.steps, or run.token_budget=0 to train a number of steps of your own.")
    decay_steps = self.optimizer.decay_steps or self.run.steps
    if self.optimizer.warmup_steps >= decay_steps:
      raise ValueError(f"optimizer.warmup_steps={self.optimizer.warmup_steps} "
                       f"must be below the decay steps ({decay_steps}: "
                       "optimizer.decay_steps, or run.steps when it is 0).")


_SECTIONS = {"model": ModelConfig, "mesh": MeshConfig, "data": DataConfig,
             "optimizer": OptimizerConfig, "checkpoint": CheckpointConfig,
             "run": RunConfig}
_LETTERS = {"R": BlockType.RECURRENT, "A": BlockType.ATTENTION}
_ENUMS = {"a_init": AInit, "scan_impl": ScanImpl, "attention_impl": AttentionImpl,
          "remat": Remat}


def build(cd: config_dict.ConfigDict) -> Config:
  """Turns a config file's ConfigDict into a validated `Config`."""
  values = cd.to_dict()
  extra = sorted(set(values) - set(_SECTIONS))
  if extra:
    raise ValueError(f"unknown config section(s) {extra}; valid: {list(_SECTIONS)}.")
  sections = {}
  for name, section_type in _SECTIONS.items():
    if name not in values:
      raise ValueError(f"config has no section {name!r}; every one of "
                       f"{list(_SECTIONS)} is needed (start from defaults()).")
    section = dict(values[name])
    fields = [f.name for f in dataclasses.fields(section_type)]
    unknown = [f"{name}.{key}" for key in sorted(set(section) - set(fields))]
    if unknown:
      raise ValueError(f"unknown key(s) {unknown}; valid keys of {name}: {fields}.")
    missing = [f"{name}.{f.name}" for f in dataclasses.fields(section_type)
               if f.name not in section and f.default is dataclasses.MISSING]
    if missing:
      raise ValueError(f"missing key(s) {missing}; they have no default.")
    if name == "model":
      section = _model_values(section)
    else:
      section = _enum_values(name, section_type, section)
    sections[name] = section_type(**section)
  return Config(**sections)


def with_overrides(values, overrides: dict):
  """`values` (a ConfigDict, or the dict form of `to_dict`) with
  {"section.field": value} applied as `--config.section.field=value` would
  be; returns it. A key that names no field is refused."""
  for key, value in overrides.items():
    section, _, field = key.partition(".")
    fields = [f.name for f in dataclasses.fields(_SECTIONS.get(section, Config))]
    if section not in _SECTIONS or field not in fields:
      raise ValueError(f"override {key}={value!r} names no config field; give "
                       f"section.field with a section of {list(_SECTIONS)}, e.g. run.steps")
    values[section][field] = value
  return values


def _model_values(section: dict) -> dict:
  """Strings in the dict form -> the enums and tuples that ModelConfig takes."""
  if "block_pattern" in section:
    pattern = section["block_pattern"]
    if not isinstance(pattern, str) or not pattern:
      raise ValueError(f"model.block_pattern={pattern!r} must be a non-empty "
                       f"string of letters from {list(_LETTERS)}, e.g. 'RRA'.")
    for letter in pattern:
      if letter not in _LETTERS:
        raise ValueError(f"model.block_pattern={pattern!r} has unknown block "
                         f"letter {letter!r}; valid: R (recurrent), A (attention).")
    section["block_pattern"] = tuple(_LETTERS[letter] for letter in pattern)
  for name, enum_type in _ENUMS.items():
    if name in section and not isinstance(section[name], enum_type):
      valid = [e.value for e in enum_type]
      if section[name] not in valid:
        raise ValueError(f"model.{name}={section[name]!r} is not one of {valid}.")
      section[name] = enum_type(section[name])
  window = section.get("attention_window")
  if window is not None and (not isinstance(window, int) or isinstance(window, bool)):
    raise ValueError(f"model.attention_window={window!r} must be an integer >= 1, "
                     "or None for global attention.")
  return section


def _enum_values(name: str, section_type, section: dict) -> dict:
  """Strings in the dict form -> the enums of a section's enum-typed fields."""
  for field in dataclasses.fields(section_type):
    enum_type = field.type
    if (isinstance(enum_type, type) and issubclass(enum_type, enum.Enum)
        and field.name in section and not isinstance(section[field.name], enum_type)):
      valid = [e.value for e in enum_type]
      if section[field.name] not in valid:
        raise ValueError(f"{name}.{field.name}={section[field.name]!r} is not one of "
                         f"{valid}.")
      section[field.name] = enum_type(section[field.name])
  return section


def _plain(values: dict) -> dict:
  """The dict form of a section: enums as their strings (what a config file
  and `--config.section.field=value` hold)."""
  return {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}


def model_config_dict(model_config: ModelConfig) -> config_dict.ConfigDict:
  """The dict form of a ModelConfig, for putting a preset into a config file."""
  values = {f.name: getattr(model_config, f.name)
            for f in dataclasses.fields(model_config)}
  letter_of = {block: letter for letter, block in _LETTERS.items()}
  values["block_pattern"] = "".join(letter_of[b] for b in model_config.block_pattern)
  for name in _ENUMS:
    values[name] = values[name].value
  # An int-typed field rejects `--config.model.attention_window=None` (absl's
  # integer parser), so the field is untyped; `build` checks the type instead.
  values["attention_window"] = config_dict.FieldReference(
      model_config.attention_window, field_type=object)
  return config_dict.ConfigDict(values)


def defaults() -> config_dict.ConfigDict:
  """Every section at its defaults, with a tiny Griffin as the model; locked."""
  cd = config_dict.ConfigDict()
  cd.model = model_config_dict(ModelConfig(
      vocab_size=256, width=128, depth=3, lru_width=128, head_dim=64,
      gate_blocks=4, attention_window=32))
  for name, section_type in _SECTIONS.items():
    if name != "model":
      cd[name] = config_dict.ConfigDict(_plain(dataclasses.asdict(section_type())))
  # The tiny default model reads bytes (vocabulary 256); configs that use the
  # SentencePiece-tokenized corpus set data.dataset and model.vocab_size.
  cd.data.dataset = "stdlib_bytes"
  cd.lock()
  return cd


def pretraining_recipe(cd: config_dict.ConfigDict, *, token_budget: int, warmup_steps: int,
                       save_every_steps: int, eval_every_steps: int):
  """A pod config's training recipe (docs/recipes.md says where each number
  comes from): the learning-rate rule's peak rate for the model's width,
  `warmup_steps` of linear warmup then cosine decay to a tenth of the peak at
  the last step, `run.steps` derived from `token_budget` and the global batch
  in tokens (it follows a changed batch or length), and the cadences of a
  multi-day run. Set the model, data length and batch first."""
  from trainer import lr_rule
  cd.optimizer.learning_rate = lr_rule.recipe_learning_rate(lr_rule.RULE, cd.model.width)
  cd.optimizer.warmup_steps = warmup_steps
  cd.optimizer.decay_steps = 0  # run.steps: the cosine ends with the run
  cd.optimizer.end_lr_fraction = 0.1
  cd.run.token_budget = token_budget
  cd.run.steps = cd.run.get_ref("token_budget") // (
      cd.data.get_ref("global_batch_size") * cd.data.get_ref("seq_len"))
  cd.run.log_every_steps = 100
  cd.run.eval_every_steps = eval_every_steps
  cd.run.eval_steps = 50
  cd.checkpoint.save_every_steps = save_every_steps
  cd.checkpoint.max_to_keep = 3
  cd.checkpoint.keep_period = 25 * save_every_steps  # a permanent step about every day
  return cd


def to_dict(config: Config) -> dict:
  """The JSON-able dict form of `config` (what `build` reads back)."""
  values = {name: _plain(dataclasses.asdict(getattr(config, name)))
            for name in _SECTIONS if name != "model"}
  values["model"] = model_config_dict(config.model).to_dict()
  return values


def from_dict(values: dict) -> Config:
  """`build` for the dict form stored in checkpoints."""
  return build(config_dict.ConfigDict(values))
