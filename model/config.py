"""The model's frozen config, its enums, and its validation.

Every check runs when the config is built, before anything is traced or
compiled, and raises a ValueError naming the field, the bad value and what would
be valid.
"""

import dataclasses
import enum
import itertools

from common.checks import check_ints


class BlockType(enum.Enum):
  """The temporal-mixing block of one residual layer."""

  RECURRENT = "recurrent"  # Conv1D + RG-LRU (paper §2.4).
  ATTENTION = "attention"  # MQA; local when `attention_window` is set.


class ScanImpl(enum.Enum):
  """How the RG-LRU's linear recurrence h_t = a_t h_{t-1} + b_t is evaluated."""

  LINEAR = "linear"  # lax.scan, one step per token (the paper's choice).
  ASSOCIATIVE = "associative"  # lax.associative_scan, O(log T) depth.
  PALLAS = "pallas"  # Sequential Pallas TPU kernel (§4.2); interpreted off TPU.
  AUTO = "auto"  # PALLAS when compiling for TPU, LINEAR elsewhere.


class AttentionImpl(enum.Enum):
  """How a full sequence is attended (decoding always uses the XLA path)."""

  XLA = "xla"  # Einsums over the masked logits: T x T, or T x 2C blocks.
  SPLASH = "splash"  # JAX's Pallas TPU splash kernel; interpreted off TPU.
  AUTO = "auto"  # SPLASH when compiling for TPU and the shapes fit it, else XLA.


class Remat(enum.Enum):
  """What each scanned layer group keeps for the backward pass."""

  NONE = "none"  # Keep every activation.
  FULL = "full"  # Keep only the group's input; recompute the rest.
  SAVE_MATMULS = "save_matmuls"  # Keep matmul outputs, recompute elementwise.


class AInit(enum.Enum):
  """Initialisation of the RG-LRU's diagonal a = sigmoid(Λ).

  The paper (§2.4) draws a^c uniformly in [0.9, 0.999]; the official
  recurrentgemma code draws a itself in [0.9, 0.999], uniform in a².
  """

  PAPER = "paper"
  RECURRENTGEMMA = "recurrentgemma"


COMPUTE_DTYPES = ("float32", "bfloat16")


def cycle_pattern(pattern: tuple[BlockType, ...], depth: int) -> tuple[BlockType, ...]:
  """The per-layer block types: `pattern` repeated until `depth` layers."""
  return tuple(itertools.islice(itertools.cycle(pattern), depth))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a Griffin, Hawk or MQA model.

  Griffin is `block_pattern=(R, R, A)` with a local `attention_window`; Hawk is
  `(R,)`; the MQA baseline is `(A,)` with `attention_window=None` (global).
  """

  vocab_size: int
  width: int  # D
  depth: int  # number of residual layers
  lru_width: int  # E = D_RNN
  block_pattern: tuple[BlockType, ...] = (
      BlockType.RECURRENT, BlockType.RECURRENT, BlockType.ATTENTION)
  attention_window: int | None = 1024  # None = global attention.
  head_dim: int = 128  # H; heads N = D / H; one shared K/V head.
  mlp_expansion: int = 3  # F = mlp_expansion * D
  conv_width: int = 4  # W
  gate_blocks: int = 16  # G, blocks of the block-diagonal RG-LRU gates.
  lru_c: float = 8.0  # the constant c in a_t = a^(c r_t)
  a_init: AInit = AInit.PAPER
  gelu_tanh: bool = True  # jax.nn.gelu's default (tanh form), as in recurrentgemma.
  rope_max_wavelength: float = 10_000.0
  embed_scale_by_sqrt_dim: bool = False
  logits_soft_cap: float = 0.0  # 0 = off; else c * tanh(logits / c).
  norm_eps: float = 1e-6
  # The Pallas kernel when compiling for TPU (also ahead of time from a CPU
  # host), lax.scan elsewhere.
  scan_impl: ScanImpl = ScanImpl.AUTO
  # Splash attention when compiling for TPU (whole 128-lane blocks and heads),
  # the XLA einsums elsewhere and for sequence-parallel meshes.
  attention_impl: AttentionImpl = AttentionImpl.AUTO
  remat: Remat = Remat.FULL
  compute_dtype: str = "float32"

  def __post_init__(self):
    check_ints("model", self, 1, "vocab_size", "width", "depth", "lru_width", "head_dim",
              "mlp_expansion", "conv_width", "gate_blocks")
    if not self.block_pattern:
      raise ValueError("model.block_pattern is empty; give at least one block type.")
    for block in self.block_pattern:
      if not isinstance(block, BlockType):
        raise ValueError(f"model.block_pattern has unknown block type {block!r}; "
                         f"valid: {[b.value for b in BlockType]}.")
    if self.width % self.head_dim:
      raise ValueError(f"model.width={self.width} is not a multiple of "
                       f"model.head_dim={self.head_dim}; attention needs "
                       "width = num_heads * head_dim.")
    if self.head_dim % 4:
      raise ValueError(f"model.head_dim={self.head_dim} must be a multiple of 4: "
                       "RoPE rotates pairs in the first half of each head.")
    if self.lru_width % self.gate_blocks:
      raise ValueError(f"model.lru_width={self.lru_width} is not divisible by "
                       f"model.gate_blocks={self.gate_blocks}; the block-diagonal "
                       "gates need equal blocks.")
    if self.attention_window is not None and self.attention_window < 1:
      raise ValueError(f"model.attention_window={self.attention_window} must be "
                       ">= 1, or None for global attention.")
    if self.lru_c <= 0:
      raise ValueError(f"model.lru_c={self.lru_c} must be > 0.")
    if self.logits_soft_cap < 0:
      raise ValueError(f"model.logits_soft_cap={self.logits_soft_cap} must be "
                       ">= 0 (0 turns it off).")
    if self.norm_eps <= 0:
      raise ValueError(f"model.norm_eps={self.norm_eps} must be > 0.")
    for name, enum_type in (("a_init", AInit), ("scan_impl", ScanImpl),
                            ("attention_impl", AttentionImpl), ("remat", Remat)):
      if not isinstance(getattr(self, name), enum_type):
        raise ValueError(f"model.{name}={getattr(self, name)!r} is not one of "
                         f"{[e.value for e in enum_type]}.")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"model.compute_dtype={self.compute_dtype!r} is not one "
                       f"of {COMPUTE_DTYPES}.")

  @property
  def num_heads(self) -> int:
    return self.width // self.head_dim

  @property
  def mlp_width(self) -> int:
    return self.mlp_expansion * self.width

  @property
  def block_types(self) -> tuple[BlockType, ...]:
    return cycle_pattern(self.block_pattern, self.depth)

  @property
  def num_groups(self) -> int:
    """Full repetitions of `block_pattern`; these are scanned over."""
    return self.depth // len(self.block_pattern)

  @property
  def tail_types(self) -> tuple[BlockType, ...]:
    """The leftover layers after the last full group (not scanned)."""
    return self.block_pattern[: self.depth % len(self.block_pattern)]
