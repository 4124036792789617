"""Import of official recurrentgemma (Flax linen) parameters into `Griffin`.

    config = config_from_recurrentgemma(rg_config)
    model = Griffin(config, nnx.Rngs(0))
    load_recurrentgemma_params(model, rg_params)   # rg_params = variables["params"]

Checked by tests/test_reference.py: same logits as recurrentgemma.
"""

from typing import Any, Mapping

import numpy as np
from flax import nnx

from model.config import AInit, BlockType, ModelConfig, cycle_pattern
from model.griffin import Griffin


def _shortest_period(types: tuple[BlockType, ...]) -> tuple[BlockType, ...]:
  for period in range(1, len(types) + 1):
    if cycle_pattern(types[:period], len(types)) == types:
      return types[:period]
  raise AssertionError("unreachable: the whole tuple is always a period")


def config_from_recurrentgemma(rg_config, **overrides) -> ModelConfig:
  """The ModelConfig equal to a `recurrentgemma.GriffinConfig`."""
  types = tuple(BlockType.RECURRENT if t.name == "RECURRENT" else BlockType.ATTENTION
                for t in rg_config.block_types)
  if rg_config.mlp_expanded_width % rg_config.width:
    raise ValueError(f"mlp_expanded_width={rg_config.mlp_expanded_width} is not a "
                     f"multiple of width={rg_config.width}; this model needs F = k * D.")
  fields = dict(
      vocab_size=rg_config.vocab_size,
      width=rg_config.width,
      depth=len(types),
      lru_width=rg_config.lru_width or rg_config.width,
      block_pattern=_shortest_period(types),
      attention_window=rg_config.attention_window_size,
      head_dim=rg_config.width // rg_config.num_heads,
      mlp_expansion=rg_config.mlp_expanded_width // rg_config.width,
      gate_blocks=rg_config.num_heads,  # the official code's block count
      a_init=AInit.RECURRENTGEMMA,
      embed_scale_by_sqrt_dim=rg_config.embeddings_scale_by_sqrt_dim,
      logits_soft_cap=rg_config.logits_soft_cap,
  )
  fields.update(overrides)
  return ModelConfig(**fields)


def _block_params(rg_block: Mapping[str, Any], block_type: BlockType) -> dict:
  """One residual block's parameters, keyed by our path below the block."""
  out = {
      ("temporal_pre_norm", "scale"): rg_block["temporal_pre_norm"]["scale"],
      ("channel_pre_norm", "scale"): rg_block["channel_pre_norm"]["scale"],
      ("mlp", "up"): np.transpose(rg_block["mlp_block"]["ffw_up"]["w"], (1, 0, 2)),  # D leads
      ("mlp", "up_bias"): np.reshape(rg_block["mlp_block"]["ffw_up"]["b"], (2, -1)),
      ("mlp", "down", "kernel"): rg_block["mlp_block"]["ffw_down"]["kernel"],
      ("mlp", "down", "bias"): rg_block["mlp_block"]["ffw_down"]["bias"],
  }
  if block_type is BlockType.RECURRENT:
    rec = rg_block["recurrent_block"]
    out[("temporal", "in_proj")] = np.stack([rec["linear_x"]["kernel"], rec["linear_y"]["kernel"]],
                                            axis=1)  # (D, 2, E)
    out[("temporal", "in_bias")] = np.stack([rec["linear_x"]["bias"], rec["linear_y"]["bias"]])
    out[("temporal", "linear_out", "kernel")] = rec["linear_out"]["kernel"]
    out[("temporal", "linear_out", "bias")] = rec["linear_out"]["bias"]
    out[("temporal", "conv_1d", "w")] = rec["conv_1d"]["w"]
    out[("temporal", "conv_1d", "b")] = rec["conv_1d"]["b"]
    lru = rec["rg_lru"]
    out[("temporal", "rg_lru", "a_param")] = lru["a_param"]
    for gate in ("input_gate", "a_gate"):
      out[("temporal", "rg_lru", gate, "w")] = lru[gate]["w"]
      out[("temporal", "rg_lru", gate, "b")] = lru[gate]["b"]
  else:
    att = rg_block["attention_block"]
    q_DX = np.asarray(att["proj_q"]["kernel"])
    H = att["proj_k"]["kernel"].shape[1]
    out[("temporal", "q")] = q_DX.reshape(q_DX.shape[0], -1, H)
    out[("temporal", "k")] = att["proj_k"]["kernel"]
    out[("temporal", "v")] = att["proj_v"]["kernel"]
    out_XD = np.asarray(att["proj_final"]["kernel"])
    out[("temporal", "out")] = out_XD.reshape(-1, H, out_XD.shape[1])
    out[("temporal", "out_bias")] = att["proj_final"]["bias"]
  return out


def load_recurrentgemma_params(model: Griffin, rg_params: Mapping[str, Any]) -> None:
  """Writes recurrentgemma parameters (`variables["params"]`) into `model`.

  Every parameter of `model` must be written exactly once with its own shape;
  a missing, extra or misshapen parameter raises ValueError naming it.
  """
  config = model.config
  flat = {path: np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  written = set()

  def put(path, value):
    value = np.asarray(value)
    target = path[:-1] if path[0] == "groups" else path  # last = layer index
    if target not in flat:
      raise ValueError(f"recurrentgemma parameter maps to unknown path {target}")
    dest = flat[target][path[-1]] if path[0] == "groups" else flat[target]
    if dest.shape != value.shape:
      raise ValueError(f"{target}: recurrentgemma shape {value.shape} != ours {dest.shape}; "
                       "is the config the checkpoint's?")
    dest[...] = value
    written.add(path)

  put(("embedder", "embedding"), rg_params["embedder"]["input_embedding"])
  put(("final_norm", "scale"), rg_params["final_norm"]["scale"])
  period = len(config.block_pattern)
  for i, block_type in enumerate(config.block_types):
    rg_block = rg_params[f"blocks.{i}"]
    group, slot = divmod(i, period)
    for sub, value in _block_params(rg_block, block_type).items():
      if group < config.num_groups:
        put(("groups", "blocks", slot) + sub + (group,), value)
      else:
        put(("tail", "blocks", slot) + sub, value)
  expected = sum(v.shape[0] if p[0] == "groups" else 1 for p, v in flat.items())
  if len(written) != expected:
    raise ValueError(f"wrote {len(written)} of {expected} parameter arrays; the "
                     "recurrentgemma tree does not match this config")
  extra = set(rg_params) - {"embedder", "final_norm"} - {f"blocks.{i}" for i in range(config.depth)}
  if extra:
    raise ValueError(f"recurrentgemma parameters {sorted(extra)} have no place in this config")
  nnx.update(model, nnx.from_flat_state(flat))


def recurrentgemma_config_fields(config: ModelConfig) -> dict:
  """GriffinConfig keyword arguments for the same model (for tests and import)."""
  return dict(
      vocab_size=config.vocab_size, width=config.width,
      mlp_expanded_width=config.mlp_width, num_heads=config.num_heads,
      lru_width=config.lru_width, attention_window_size=config.attention_window,
      embeddings_scale_by_sqrt_dim=config.embed_scale_by_sqrt_dim,
      logits_soft_cap=config.logits_soft_cap)
