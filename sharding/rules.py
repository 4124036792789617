"""THE logical-axis rules table, and the only place that names mesh axes.

The model annotates parameters and key activations with logical names; this
table maps each name to mesh axes (None = replicated). Paper §4.1 layout:
  - MLP and the recurrent block's linears: column- then row-parallel over
    `tensor` ("mlp", "lru"); one all-reduce forward, one backward per block.
  - Conv1D and RG-LRU are per channel ("lru") and the block-diagonal gates are
    split by whole blocks ("gate_block"): no communication inside the block.
  - Attention: query heads over `tensor`; the single K/V head is replicated
    ("head_dim" is never sharded), so every shard computes it.
  - ZeRO-3: parameters (and with them the optimizer state) are sharded over
    `fsdp` on their model-width axis ("embed", and "gate_in" for the gates),
    all-gathered per layer inside the step.
  - Embedding (V, D): vocab over `tensor`, width over `fsdp`. The tied output
    layer then produces logits sharded over the vocabulary, so the largest
    activation (B, T, V) is never replicated; the input lookup costs one
    all-reduce of (B, T, D).
  - The batch over `data` x `fsdp`.
  - Sequence parallelism: activations' time axis ("length") over `sequence`
    (size 1 unless the mesh config asks for more). Everything per token needs
    no communication; the RG-LRU passes a (B, E) carry per shard, the Conv1D a
    halo of W-1 tokens and attention its K/V halo (`model/sequence.py`).
    Parameters are never split over `sequence`: its shards hold copies, like
    data shards (`fsdp` is the axis that shards them).
"""

from typing import Mapping

import jax
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("lru", "tensor"),
    ("gate_block", "tensor"),
    ("gate_in", "fsdp"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
)
_TABLE = dict(RULES)


def spec_for(names: tuple[str | None, ...], where: str) -> P:
  """The PartitionSpec of logical `names`; unknown names are an error."""
  unknown = [n for n in names if n is not None and n not in _TABLE]
  if unknown:
    raise ValueError(f"{where}: logical axes {unknown} are not in sharding/rules.py "
                     f"RULES (known: {sorted(_TABLE)}); add them to the table")
  return P(*(None if n is None else _TABLE[n] for n in names))


def param_specs(abstract_params: nnx.State) -> nnx.State:
  """A PartitionSpec for every parameter, from its logical names.

  A parameter without names, or with names the table does not map, raises: an
  unannotated parameter is never silently replicated.
  """
  def one(path, variable):
    where = "/".join(str(k) for k in path)
    names = variable.get_metadata().get("out_sharding")
    if names is None:
      raise ValueError(f"parameter {where} has no logical axis names; annotate it "
                       "with model.layers.param(value, axes)")
    return variable.replace(spec_for(tuple(names), where))
  return nnx.map_state(one, abstract_params)


def check_divisible(abstract_params: nnx.State, specs: nnx.State, mesh: jax.sharding.Mesh):
  """Every sharded dimension must divide by its mesh axes' size (before compile)."""
  for (path, variable), (_, spec) in zip(nnx.to_flat_state(abstract_params),
                                         nnx.to_flat_state(specs)):
    names = variable.get_metadata()["out_sharding"]
    for dim, name, axes in zip(variable.shape, names, spec.get_value()):
      axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
      size = 1
      for axis in axes:
        size *= mesh.shape[axis]
      if dim % size:
        raise ValueError(
            f"parameter {'/'.join(map(str, path))} of shape {variable.shape}: its "
            f"'{name}' dimension {dim} does not divide over mesh axes {axes} of size "
            f"{size} ({dict(mesh.shape)}); change the model or the mesh sizes")


def named(mesh: jax.sharding.Mesh, specs):
  """PartitionSpecs (any pytree) -> NamedShardings on `mesh`."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, P))


def opt_state_shardings(optimizer: optax.GradientTransformation, abstract_opt_state,
                        param_shardings: nnx.State, mesh: jax.sharding.Mesh):
  """The optimizer state's shardings: moments like their parameters, the rest
  (step counts) replicated."""
  return optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, abstract_opt_state, param_shardings,
      transform_non_params=lambda _: NamedSharding(mesh, P()),
      is_leaf=lambda x: isinstance(x, NamedSharding))


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs that carry their shardings: what Orbax restores into and
  what an ahead-of-time lowering takes."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Rows of a (B, T) batch over data x fsdp."""
  return NamedSharding(mesh, spec_for(("batch", None), "batch"))


def microbatch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """(K, B/K, T) micro-batches: each one's rows over data x fsdp, as a batch's."""
  return NamedSharding(mesh, spec_for((None, "batch", None), "micro-batches"))


def activation_rules():
  """Context in which the model's `constrain(x, names)` calls take effect
  (use together with `jax.set_mesh(mesh)`)."""
  return nnx.logical_axis_rules(RULES)


def check_batch_divisible(global_batch_size: int, axis_sizes: Mapping[str, int],
                          grad_accum_steps: int = 1, where: str = ""):
  """Each micro-batch splits evenly over the devices that hold different rows.
  `axis_sizes`: a mesh's `shape`, or the sizes a config resolves to (`where`
  says on what, e.g. " on 2 x v5p-128")."""
  rows = 1
  for axis in _TABLE["batch"]:
    rows *= axis_sizes[axis]
  if global_batch_size % (rows * grad_accum_steps):
    accum = (f" / optimizer.grad_accum_steps={grad_accum_steps} micro-batches"
             if grad_accum_steps > 1 else "")
    raise ValueError(f"data.global_batch_size={global_batch_size}{accum} is not divisible by "
                     f"the {rows} batch shards (mesh axes {_TABLE['batch']} of "
                     f"{dict(axis_sizes)}{where}); use a multiple of {rows * grad_accum_steps}")
