"""Evaluations of the linear recurrence h_t = a_t * h_{t-1} + b_t over time.

All take a_BTE, b_BTE (f32) and an initial state h0_BE, and return (h_BTE,
h_last_BE). A Pallas kernel for TPU will be one more entry in `SCANS`.
"""

import jax
import jax.numpy as jnp

from model.config import ScanImpl

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


SCANS = {
    ScanImpl.LINEAR: linear_scan,
    ScanImpl.ASSOCIATIVE: associative_scan,
}
