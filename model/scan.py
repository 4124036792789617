"""Evaluations of the linear recurrence h_t = a_t * h_{t-1} + b_t over time.

All take a_BTE, b_BTE (f32) and an initial state h0_BE, and return (h_BTE,
h_last_BE). The Pallas TPU kernel is in `model/pallas_scan.py`; look scans up
with `get_scan`, which also resolves `ScanImpl.AUTO`. `sequence_parallel_scan`
runs any of them with time split over devices.
"""

import jax
import jax.numpy as jnp

from model import sequence
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


def sequence_parallel_scan(scan, a_BTE, b_BTE, h0_BE):
  """`scan(a_BTE, b_BTE, h0_BE)` with time split over P sequence shards
  (`model/sequence.py`); just `scan` when time is not split.

  The recurrence is affine in the state, so shard p's chunk maps the state
  entering it, h_in, to h_out = A_p h_in + z_p, with A_p the product of its
  a_t (0 once a document starts inside the chunk: resets are already a_t = 0)
  and z_p its last state when scanned from zero. Each shard:
    1. scans its chunk from zero for z_p, and multiplies its a_t into A_p;
    2. all-gathers the P (A, z) pairs, (B, E) each, and composes them in time
       order from h0: the state entering every shard, and the last state;
    3. scans its chunk again from the state entering it.
  Step 3 repeats the unsharded scan's operations from a carry equal to its
  own up to f32 rounding, so the values match it, and differentiating through
  the two scans and the composition gives its gradients. Twice the scan work
  of one chunk (the first scan's outputs but z_p are dropped) and one
  all-gather of 2 P B E floats per layer (B and E of one shard; its
  transpose, a reduce-scatter, in the backward pass).
  """
  if sequence.shards() == 1:
    return scan(a_BTE, b_BTE, h0_BE)

  def local(a_BTE, b_BTE, h0_BE):
    B, _, E = a_BTE.shape
    _, z_BE = scan(a_BTE, b_BTE, jnp.zeros_like(h0_BE))
    decay_BE = jnp.prod(a_BTE, axis=1)
    # One all-gather of both: shard p's pair lands at [2p, 2p + 1].
    pairs_B2PE = sequence.gather(jnp.stack([decay_BE, z_BE], axis=1))
    pairs_P2BE = jnp.transpose(pairs_B2PE.reshape(B, -1, 2, E), (1, 2, 0, 3))

    def compose(h_BE, pair_2BE):
      decay_BE, z_BE = pair_2BE
      return decay_BE * h_BE + z_BE, h_BE

    h_last_BE, h_in_PBE = jax.lax.scan(compose, h0_BE, pairs_P2BE)
    h_BTE, _ = scan(a_BTE, b_BTE, h_in_PBE[sequence.index()])
    return h_BTE, h_last_BE[:, None]  # every shard holds it: keep one copy

  x_names, h_names = ("batch", "length", "lru"), ("batch", "lru")
  h_BTE, h_last_BPE = sequence.shard_map(
      local, in_names=(x_names, x_names, h_names), out_names=(x_names, x_names)
  )(a_BTE, b_BTE, h0_BE)
  return h_BTE, h_last_BPE[:, -1]
