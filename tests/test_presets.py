"""Model presets: every one validates, exact parameter counts (pinned, checked
against a closed form and against recurrentgemma), and the table CLI."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from recurrentgemma import jax as rg

from model import presets
from model.config import BlockType, ModelConfig
from model.convert import config_from_recurrentgemma

# Exact counts at the presets' own vocabularies. If a change to the model is
# meant to change them, rerun `python -m model.presets` and update this dict;
# otherwise a layer gained or lost a parameter.
PINNED = {
    "griffin-1b": 1_308_477_440,
    "griffin-3b": 2_932_952_064,
    "griffin-7b": 6_921_254_912,
    "griffin-14b": 13_927_781_376,
    "hawk-7b": 7_307_497_472,
    "mqa-7b": 6_071_521_280,
    "recurrentgemma-2b": 2_682_862_080,
    "recurrentgemma-9b": 8_579_977_216,
}


def closed_form_count(config: ModelConfig) -> int:
  """The parameter count from the architecture, independent of the model code."""
  D, E, F, G = config.width, config.lru_width, config.mlp_width, config.gate_blocks
  H, V, W = config.head_dim, config.vocab_size, config.conv_width
  recurrent = (2 * D * E + 2 * E  # linear_x, linear_y
               + E * D + D  # linear_out
               + W * E + E  # Conv1D
               + 2 * (E * E // G + E)  # block-diagonal input and a gates
               + E)  # a_param
  attention = D * D + 2 * D * H + D * D + D  # q; one k and one v head; out
  mlp = 2 * D * F + 2 * F + F * D + D
  blocks = sum(recurrent if t is BlockType.RECURRENT else attention
               for t in config.block_types)
  # Two RMSNorms per block and a final one; the embedding is tied (counted once).
  return V * D + blocks + config.depth * (mlp + 2 * D) + D


def test_every_preset_is_a_valid_config():
  assert len(presets.PRESETS) == 3 * 7 + 2
  for name, config in presets.PRESETS.items():
    assert isinstance(config, ModelConfig)
    assert presets.get(name) == config  # `get` re-runs validation via replace.
    assert config.lru_width % config.gate_blocks == 0, name


def test_get_overrides_validates_and_rejects_unknown_names():
  assert presets.get("griffin-1b", vocab_size=256).vocab_size == 256
  with pytest.raises(ValueError, match="gate_blocks"):
    presets.get("griffin-1b", gate_blocks=7)  # 7 does not divide 2560.
  with pytest.raises(ValueError, match="griffin-1b"):
    presets.get("griffin-2b")


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_param_counts(name):
  assert presets.param_count(presets.PRESETS[name]) == PINNED[name]


@pytest.mark.parametrize("name", ["griffin-1b", "griffin-14b", "hawk-100m",
                                  "mqa-200m", "recurrentgemma-2b"])
def test_param_count_matches_closed_form(name):
  # griffin-14b has a leftover (unscanned) layer: 40 = 13 * 3 + 1.
  config = presets.PRESETS[name]
  by_kind = presets.param_count_by_kind(config)
  assert sum(by_kind.values()) == closed_form_count(config)
  assert by_kind["embedding"] == config.vocab_size * config.width


@pytest.mark.parametrize("size,preset", [("2b", "RECURRENT_GEMMA_2B_V1"),
                                         ("9b", "RECURRENT_GEMMA_9B_V1")])
def test_recurrentgemma_presets_match_the_official_package(size, preset):
  rg_config = rg.GriffinConfig.from_preset(getattr(rg.Preset, preset))
  ours = presets.PRESETS[f"recurrentgemma-{size}"]
  assert config_from_recurrentgemma(rg_config) == ours
  if size == "2b":  # One abstract init is enough; the 9B differs only in shape.
    tokens_BT = jnp.zeros((1, 1), jnp.int32)
    # recurrentgemma broadcasts biases by implicit rank promotion.
    with jax.numpy_rank_promotion("allow"):
      variables = jax.eval_shape(rg.Griffin(rg_config).init, jax.random.key(0),
                                 tokens_BT, tokens_BT)
    official = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert presets.param_count(ours) == official


def test_cli_prints_a_row_per_preset(capsys):
  presets.main(["--vocab_size", "32768"])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].split()[0] == "preset"
  rows = {line.split()[0]: line.split() for line in lines[1:]}
  assert set(rows) == set(presets.PRESETS)
  assert all(row[7] == "32768" for row in rows.values())
  griffin_1b = presets.get("griffin-1b", vocab_size=32768)
  assert rows["griffin-1b"][8] == presets.format_count(presets.param_count(griffin_1b))
  assert rows["griffin-1b"][9:] == ["1.3B", "+0.8%"]
  assert len(rows["recurrentgemma-2b"]) == 9  # No paper label for RecurrentGemma.


def test_format_count():
  assert presets.format_count(1_308_477_440) == "1.31B"
  assert presets.format_count(113_879_808) == "114M"


def test_vocab_override_changes_only_the_embedding():
  config = presets.PRESETS["griffin-3b"]
  bigger = dataclasses.replace(config, vocab_size=config.vocab_size + 768)
  assert presets.param_count(bigger) - PINNED["griffin-3b"] == 768 * config.width
