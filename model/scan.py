"""Evaluations of the linear recurrence h_t = a_t * h_{t-1} + b_t over time.

All take a_BTE, b_BTE (f32) and an initial state h0_BE, and return (h_BTE,
h_last_BE). The Pallas TPU kernel is in `model/pallas_scan.py`; look scans up
with `get_scan`, which also resolves `ScanImpl.AUTO`.
"""

import jax
import jax.numpy as jnp

from model.config import ScanImpl
from model.pallas_scan import pallas_scan

# Steps of lax.scan unrolled per loop iteration: enough to amortise the loop
# overhead on CPU without the long compiles of recurrentgemma's unroll=128.
LINEAR_UNROLL = 8


def linear_scan(a_BTE, b_BTE, h0_BE):
  """Sequential scan, one step per token (the paper's choice on TPU, §4.2)."""
  def step(h_BE, ab):
    a_BE, b_BE = ab
    h_BE = a_BE * h_BE + b_BE
    return h_BE, h_BE

  a_TBE, b_TBE = jnp.swapaxes(a_BTE, 0, 1), jnp.swapaxes(b_BTE, 0, 1)
  h_last_BE, h_TBE = jax.lax.scan(step, h0_BE, (a_TBE, b_TBE), unroll=LINEAR_UNROLL)
  return jnp.swapaxes(h_TBE, 0, 1), h_last_BE


def associative_scan(a_BTE, b_BTE, h0_BE):
  """Parallel prefix scan with the composition of affine maps, O(log T) depth."""
  def compose(first, second):
    a1, b1 = first
    a2, b2 = second
    return a1 * a2, a2 * b1 + b2

  # Fold the initial state into the first input: h_0 = a_0 h0 + b_0.
  b_BTE = b_BTE.at[:, 0].add(a_BTE[:, 0] * h0_BE)
  _, h_BTE = jax.lax.associative_scan(compose, (a_BTE, b_BTE), axis=1)
  return h_BTE, h_BTE[:, -1]


def target_platform() -> str:
  """The platform being compiled for: the context mesh's devices' (so an
  ahead-of-time compile for a TPU topology on a CPU host says "tpu"), else
  the default backend's."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def auto_scan(a_BTE, b_BTE, h0_BE):
  """The Pallas kernel when compiling for TPU, linear_scan elsewhere (where
  the kernel would only be interpreted). Decided when traced, not when the
  model is built, so that a TPU compile from a CPU host gets the kernel."""
  scan = pallas_scan if target_platform() == "tpu" else linear_scan
  return scan(a_BTE, b_BTE, h0_BE)


SCANS = {
    ScanImpl.LINEAR: linear_scan,
    ScanImpl.ASSOCIATIVE: associative_scan,
    ScanImpl.PALLAS: pallas_scan,
    ScanImpl.AUTO: auto_scan,
}


def get_scan(impl: ScanImpl):
  """The scan function of `impl`."""
  if impl not in SCANS:
    raise ValueError(f"scan_impl={impl!r} is not one of {[i.value for i in SCANS]}.")
  return SCANS[impl]
