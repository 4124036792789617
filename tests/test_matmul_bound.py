"""benchmarks/matmul_bound.py counts the matmuls of a step from its jaxpr:
scanned bodies count once per iteration, and backward products count too."""

import jax
import jax.numpy as jnp

from benchmarks.matmul_bound import count_dots, dot_flops


def test_counts_forward_and_backward_matmuls_inside_a_scan():
  w_LDD = jnp.ones((3, 4, 4))
  x_BD = jnp.ones((2, 4))

  def loss(w_LDD):
    def layer(x_BD, w_DD):
      return jnp.tanh(x_BD @ w_DD), None
    return jnp.sum(jax.lax.scan(jax.checkpoint(layer), x_BD, w_LDD)[0])

  counts = count_dots(jax.make_jaxpr(jax.value_and_grad(loss))(w_LDD).jaxpr)
  # 3 layers x (forward, remat's recompute, dx, dw).
  assert sum(counts.values()) == 12
  assert sum(n * dot_flops(key) for key, n in counts.items()) == 12 * 2 * 2 * 4 * 4


def test_flops_of_a_batched_contraction():
  # (G, M, K) x (G, K, N), batched over G: 2 G M K N.
  dims = (((2,), (1,)), ((0,), (0,)))
  key = ((3, 5, 7), (3, 7, 11), dims, jnp.float32, jnp.float32, jnp.float32)
  assert dot_flops(key) == 2 * 3 * 5 * 7 * 11
