"""The mesh's frozen config: ICI and DCN sizes of the data, fsdp, sequence and
tensor axes.

ICI sizes split the devices of one slice (fast links); DCN sizes split the
slices (data-centre network). -1 means "the rest". No JAX import: the sizes are
checked against a device count the caller passes in.
"""

import dataclasses
import math

from common.checks import check_int

# Mesh axis order, by increasing network traffic (what `create_device_mesh`
# expects): tensor (all-reduces of activations in every block) is innermost;
# sequence (small halos and carries to neighbouring shards) sits next to it.
AXES = ("data", "fsdp", "sequence", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Per-axis mesh sizes; an axis spans `ici_<axis> * dcn_<axis>` devices.

  `sequence` > 1 splits every activation's time axis (sequence parallelism,
  docs/architecture.md): for long sequences whose activations do not fit when
  only the batch is split.
  """

  ici_data: int = -1
  ici_fsdp: int = 1
  ici_sequence: int = 1
  ici_tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_sequence: int = 1
  dcn_tensor: int = 1

  def __post_init__(self):
    for kind in ("ici", "dcn"):
      names = [f"{kind}_{axis}" for axis in AXES]
      for name in names:
        if getattr(self, name) != -1:
          check_int(f"mesh.{name}", getattr(self, name), 1,
                    "or -1 for the rest of the devices.")
      inferred = [f"mesh.{name}=-1" for name in names if getattr(self, name) == -1]
      if len(inferred) > 1:
        raise ValueError(f"{' and '.join(inferred)}: at most one {kind.upper()} "
                         "size may be -1 (inferred); give the others explicitly.")

  def resolve_ici_dcn(self, num_devices: int,
                      num_slices: int = 1) -> tuple[dict[str, int], dict[str, int]]:
    """The ICI sizes (per slice) and DCN sizes (across slices), -1 filled in.

    Raises ValueError when the sizes do not multiply to the devices of a slice
    (`num_devices / num_slices`) or to `num_slices`.
    """
    check_int("num_devices", num_devices)
    check_int("num_slices", num_slices)
    if num_devices % num_slices:
      raise ValueError(f"num_devices={num_devices} is not divisible by "
                       f"num_slices={num_slices}; slices must be the same size.")
    ici = self._fill("ici", num_devices // num_slices,
                     f"the {num_devices // num_slices} devices per slice "
                     f"(num_devices={num_devices}, num_slices={num_slices})")
    dcn = self._fill("dcn", num_slices, f"num_slices={num_slices}")
    return ici, dcn

  def resolve(self, num_devices: int, num_slices: int = 1) -> dict[str, int]:
    """The total size of each axis, {"data": .., "fsdp": .., "sequence": .., "tensor": ..}."""
    ici, dcn = self.resolve_ici_dcn(num_devices, num_slices)
    return {axis: ici[axis] * dcn[axis] for axis in AXES}

  def _fill(self, kind: str, total: int, what: str) -> dict[str, int]:
    sizes = {axis: getattr(self, f"{kind}_{axis}") for axis in AXES}
    given = ", ".join(f"mesh.{kind}_{axis}={size}" for axis, size in sizes.items())
    known = math.prod(size for size in sizes.values() if size != -1)
    if -1 in sizes.values():
      if total % known:
        raise ValueError(f"{given}: the explicit sizes multiply to {known}, "
                         f"which does not divide {what}.")
      return {axis: total // known if size == -1 else size
              for axis, size in sizes.items()}
    if known != total:
      raise ValueError(f"{given} multiply to {known}, not to {what}; change "
                       "them or set one to -1.")
    return sizes
