"""Per-host numpy batches -> global jax.Arrays with the data sharding."""

import jax
import numpy as np


def make_global_batch(host_batch: dict[str, np.ndarray],
                      sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Each field's (B_host, T) rows become a (B_host * process_count, T) array.

  `sharding` is the batch sharding (`sharding.rules.batch_sharding(mesh)`):
  every process passes its own rows, in process order along the batch axis;
  `make_array_from_process_local_data` places them on this process's devices.
  """
  return {name: jax.make_array_from_process_local_data(sharding, rows_BT)
          for name, rows_BT in host_batch.items()}
