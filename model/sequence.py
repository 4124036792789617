"""Sequence parallelism: the primitives of the temporal mixers with time split
over devices.

When the rules table maps the logical axis "length" to mesh axes of P > 1
devices, every activation's time axis is cut into P contiguous chunks of T/P
tokens, one per shard, in order. Per-token work (projections, norms, MLP,
gates) runs on its chunk under GSPMD with no communication. The three temporal
mixers read other chunks, and do it inside `shard_map` with explicit
collectives over the "length" axes:
  - the RG-LRU scan (`model/scan.py`): one all-gather of (B, E) carries;
  - the Conv1D (`model/recurrent.py`): the previous shard's last W-1 inputs;
  - attention (`model/attention.py`): the previous shards' last `window` keys
    and values, or all of them (one all-gather) for global attention.
With P = 1 (a mesh without sequence sharding, or no mesh) none of this runs:
the blocks call their unsharded code.

Like the rest of `model/`, nothing here names a mesh axis: the axes come from
the logical rules in effect (`sharding.rules.activation_rules()`).
"""

import math

import flax.core.spmd
import flax.linen as nn
import jax


def _length_axes() -> tuple[str, ...]:
  """The mesh axes time is split over (() = none), outside or inside
  `shard_map`."""
  mesh = jax.sharding.get_abstract_mesh()
  rules = flax.core.spmd.get_logical_axis_rules()
  if mesh.empty or not rules:
    return ()
  axes = dict(rules).get("length")
  return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def _size() -> int:
  mesh = jax.sharding.get_abstract_mesh()
  return math.prod(mesh.shape[axis] for axis in _length_axes())


def shards() -> int:
  """P, the number of chunks time is split into (1 when not split).

  Inside a `shard_map` (mesh axes manual) the arrays are already one shard's
  and this is 1: code there sees unsplit time.
  """
  return 1 if jax.sharding.get_abstract_mesh().manual_axes else _size()


def check_length(T: int, min_per_shard: int, why: str):
  """T must split into P equal chunks of at least `min_per_shard` tokens
  (`why` names what needs them). Raises ValueError at trace time."""
  P = shards()
  if P == 1:
    return
  mesh = jax.sharding.get_abstract_mesh()
  where = f"the {P} sequence shards (mesh axes {_length_axes()} of {dict(mesh.shape)})"
  if T % P:
    raise ValueError(f"sequence length T={T} does not split evenly over {where}; use a "
                     f"multiple of {P}, or mesh sequence sizes that divide {T}.")
  if T // P < min_per_shard:
    raise ValueError(f"sequence length T={T} over {where} leaves {T // P} tokens per "
                     f"shard; {why} needs at least {min_per_shard}: use T >= "
                     f"{min_per_shard * P} or fewer sequence shards.")


def index() -> jax.Array:
  """This shard's place in time, 0 .. P-1 (inside `shard_map` only)."""
  return jax.lax.axis_index(_length_axes())


def previous(x_BT_, hops: int = 1) -> jax.Array:
  """The block `x_BT_` of the shard `hops` earlier in time; zeros on the
  first `hops` shards (inside `shard_map` only)."""
  return jax.lax.ppermute(x_BT_, _length_axes(),
                          perm=[(i, i + hops) for i in range(_size() - hops)])


def gather(x_BT_) -> jax.Array:
  """All shards' blocks of `x_BT_` concatenated in time order (inside
  `shard_map` only)."""
  return jax.lax.all_gather(x_BT_, _length_axes(), axis=1, tiled=True)


def shard_map(fn, in_names, out_names):
  """`fn` run on each shard's blocks, with the specs of logical axis names.

  Every output must be split over every mesh axis of size > 1 (each shard
  returns its own block, none a copy of a replicated value): the check is off
  (`check_vma=False`, which the Pallas interpreter needs), and under it a
  replicated output's cotangent would reach every shard and be counted P
  times. Inputs may be replicated (weights, an initial state): their
  cotangents are summed over the shards, as the chain rule asks.
  """
  mesh = jax.sharding.get_abstract_mesh()
  rules = flax.core.spmd.get_logical_axis_rules()
  spec = lambda names: nn.logical_to_mesh_axes(names, rules)  # noqa: E731
  out_specs = tuple(spec(names) for names in out_names)
  for names, out_spec in zip(out_names, out_specs):
    used = {axis for part in out_spec if part is not None
            for axis in ((part,) if isinstance(part, str) else part)}
    replicated = [axis for axis in mesh.axis_names if mesh.shape[axis] > 1 and axis not in used]
    if replicated:
      raise ValueError(f"sequence.shard_map output {names} -> {out_spec} is replicated "
                       f"over mesh axes {replicated}; every output must be split over "
                       "all of them (see the docstring).")
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec(names) for names in in_names),
                       out_specs=out_specs, check_vma=False)
