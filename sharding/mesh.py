"""The device mesh from a MeshConfig: one slice (ICI only) or several (hybrid)."""

from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils

from sharding.config import AXES, MeshConfig


def num_slices_of(devices: Sequence[jax.Device]) -> int:
  """Slices among `devices` (TPU multi-slice sets `slice_index`; else one)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A mesh with axes ("data", "fsdp", "sequence", "tensor").

  Within a slice the devices are laid out by `mesh_utils.create_device_mesh`
  (physical-topology aware on TPU); across slices by
  `create_hybrid_device_mesh`, so DCN traffic stays on the axes given DCN sizes.
  Raises ValueError naming the sizes when they do not fit the device count.
  """
  devices = list(devices if devices is not None else jax.devices())
  slices = num_slices_of(devices)
  ici, dcn = config.resolve_ici_dcn(len(devices), slices)
  ici_shape = [ici[axis] for axis in AXES]
  dcn_shape = [dcn[axis] for axis in AXES]
  # allow_split_physical_axes: e.g. data 8 x fsdp 32 on a 16x16 v5e slice
  # splits a physical axis; only used when whole-axis layouts do not exist.
  if slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices,
                                                allow_split_physical_axes=True)
  elif devices[0].platform == "tpu":
    grid = mesh_utils.create_device_mesh(ici_shape, devices, allow_split_physical_axes=True)
  else:  # CPU/GPU test meshes: the order given.
    grid = np.asarray(devices).reshape(ici_shape)
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  return jax.sharding.Mesh(grid, AXES, axis_types=auto)
