"""Named model presets and their exact parameter counts.

`griffin-<size>`, `hawk-<size>` and `mqa-<size>` are the paper's seven model
sizes (De, Smith et al. 2024, App. C, Table 2: D, D_RNN = E and depth; MLP
expansion 3, head dim 128, 16 gate blocks, Griffin window 1024). The MQA
baseline uses global attention and no E. `recurrentgemma-2b/9b` are the
released RecurrentGemma shapes (recurrentgemma `common.py` `Preset`), which
use one gate block per attention head.

Vocabulary: the paper does not give its tokenizer. The paper presets use
32,000, Gopher's SentencePiece vocabulary. This is an inference: with 32k the
counts land near the size labels, while with 256k they come out 0.7-1.2B over.

    python -m model.presets [--vocab_size 32768]

Expected (V = 32,000): griffin-1b 1.31B (+0.7% vs the 1.3B label), griffin-3b
2.93B (-2.2%), griffin-7b 6.92B (-1.1%), griffin-14b 13.93B (-0.5%). The
labels are rounded: 1.3B within 1% needs V <= 34k, 3B within 1% needs
V >= 44k, so no single vocabulary puts every label within 1%. MQA has no
D_RNN and comes out smaller (the paper's Table 1 calls its 7B config "6B").
"""

import argparse
import dataclasses
import math

from flax import nnx

from model.config import AInit, BlockType, ModelConfig
from model.griffin import Griffin

R, A = BlockType.RECURRENT, BlockType.ATTENTION

# Table 2: (name suffix, the paper's size label, D, E, depth).
PAPER_SIZES = (
    ("100m", "100M", 768, 1024, 12),
    ("200m", "200M", 1024, 1536, 12),
    ("400m", "400M", 1536, 2048, 12),
    ("1b", "1.3B", 2048, 2560, 24),
    ("3b", "3B", 3072, 4096, 24),
    ("7b", "7B", 4096, 5632, 32),
    ("14b", "14B", 5120, 8192, 40),
)
FAMILIES = {
    "griffin": dict(block_pattern=(R, R, A), attention_window=1024),
    "hawk": dict(block_pattern=(R,)),
    "mqa": dict(block_pattern=(A,), attention_window=None),
}
PAPER_FIELDS = dict(vocab_size=32_000, head_dim=128, gate_blocks=16, mlp_expansion=3)
KINDS = ("embedding", "recurrent", "attention", "mlp", "norms")


def _recurrentgemma(width: int, depth: int, heads: int) -> ModelConfig:
  return ModelConfig(
      vocab_size=256_000, width=width, depth=depth, lru_width=width,
      head_dim=width // heads, gate_blocks=heads, attention_window=2048,
      embed_scale_by_sqrt_dim=True, logits_soft_cap=30.0, a_init=AInit.RECURRENTGEMMA)


def _build_presets() -> dict[str, ModelConfig]:
  presets = {}
  for family, fields in FAMILIES.items():
    for size, _, width, lru_width, depth in PAPER_SIZES:
      presets[f"{family}-{size}"] = ModelConfig(
          width=width, depth=depth, lru_width=lru_width, **PAPER_FIELDS, **fields)
  presets["recurrentgemma-2b"] = _recurrentgemma(2560, 26, heads=10)
  presets["recurrentgemma-9b"] = _recurrentgemma(4096, 38, heads=16)
  return presets


PRESETS: dict[str, ModelConfig] = _build_presets()
PAPER_LABELS: dict[str, str] = {
    f"{family}-{size}": label for family in FAMILIES for size, label, *_ in PAPER_SIZES}


def get(name: str, **overrides) -> ModelConfig:
  """The preset `name`, with fields replaced by `overrides` (validated again)."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; valid: {sorted(PRESETS)}.")
  return dataclasses.replace(PRESETS[name], **overrides)


def param_count_by_kind(config: ModelConfig) -> dict[str, int]:
  """Parameters per kind (embedding, recurrent, attention, mlp, norms).

  Counted on the abstract model (`nnx.eval_shape`): exact, and no memory is
  allocated, so a 14B model costs a fraction of a second.
  """
  model = nnx.eval_shape(lambda: Griffin(config, nnx.Rngs(0)))
  counts = dict.fromkeys(KINDS, 0)
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    counts[_kind(config, path)] += math.prod(variable.get_value().shape)
  return counts


def param_count(config: ModelConfig) -> int:
  """Exact number of parameters; the tied embedding is counted once."""
  return sum(param_count_by_kind(config).values())


def _kind(config: ModelConfig, path: tuple) -> str:
  if path[0] == "embedder":
    return "embedding"
  if path[-1] == "scale":  # Only RMSNorms have a `scale`.
    return "norms"
  if "mlp" in path:
    return "mlp"
  # ("groups" | "tail", "blocks", slot, "temporal", ...): the slot indexes the
  # pattern, for the scanned groups and the leftover tail alike.
  return config.block_pattern[path[2]].value


def format_count(n: int) -> str:
  """1308477440 -> '1.31B'; 102760704 -> '103M'."""
  return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _label_value(label: str) -> float:
  return float(label[:-1]) * {"M": 1e6, "B": 1e9}[label[-1]]


def table(vocab_size: int | None = None) -> list[str]:
  """One line per preset (and a header); `vocab_size` replaces every vocabulary."""
  header = ("preset", "width", "depth", "lru", "heads", "pattern", "window",
            "vocab", "params", "label", "diff")
  rows = [header]
  for name, config in PRESETS.items():
    if vocab_size is not None:
      config = dataclasses.replace(config, vocab_size=vocab_size)
    has_attention = A in config.block_pattern
    has_recurrent = R in config.block_pattern
    n = param_count(config)
    label = PAPER_LABELS.get(name, "")
    diff = f"{100 * (n / _label_value(label) - 1):+.1f}%" if label else ""
    rows.append((
        name, config.width, config.depth, config.lru_width if has_recurrent else "-",
        config.num_heads if has_attention else "-",
        "".join(b.name[0] for b in config.block_pattern),
        (config.attention_window or "global") if has_attention else "-",
        config.vocab_size, format_count(n), label, diff))
  widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
  return ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]


def main(argv: list[str] | None = None) -> None:
  """Prints the preset table: `python -m model.presets [--vocab_size N]`."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vocab_size", type=int, default=None,
                      help="recount every preset with this vocabulary")
  args = parser.parse_args(argv)
  print("\n".join(table(args.vocab_size)))


if __name__ == "__main__":
  main()
