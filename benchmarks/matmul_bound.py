"""How fast the CPU training step could be: every matmul of the step timed
alone at its own shape, everything else free.

Command, from the repository root (about a minute on 2 cores):
  python -m benchmarks.matmul_bound --configs=A,B

The step is the model part of the trainer's training step that
benchmarks/train_step.py times (same shapes A and B, f32, linear scan)
without remat, so each matmul is counted once: the forward, and the two
products of its backward. The script traces value_and_grad of the trainer's
loss to a jaxpr and collects every dot_general in it, descending into scans
(times their length), remat and custom-VJP bodies. The rest of the trainer's
step (the loss mask, clipping, the AdamW update) has no matmuls, so these are
all of its matmuls. Each distinct (shapes, contraction, dtype) is then jitted
alone and timed (median of --repeats after a warmup), on inputs in the layout
the jaxpr asks for.

"bound s" is the sum over all matmuls of count x isolated time: the step time
if nothing but the matmuls took time and each ran as fast alone as it can.
Real steps also pay the element-wise work (norms, gates, softmax, the scan)
and memory traffic between ops, so they are slower; no implementation of the
same model and matmul shapes on this host is faster. The rate it implies is
compared with a 2048^3 f32 matmul measured in the same run
(benchmarks/timing.py), the rate `% matmul` in train_step's table divides by.
"""

import collections
import math
import sys

import jax
from absl import app, flags
from flax import nnx
from jax.extend import core as jex_core

from benchmarks.shapes import SHAPES, inputs, model_config
from benchmarks.timing import matmul_gflops, median_call_seconds
from model.config import Remat, ScanImpl
from model.griffin import Griffin
from trainer.loss import next_token_loss

_CONFIGS = flags.DEFINE_list("configs", ["A", "B"], "Shapes to run: A, B.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per distinct matmul.")


def _sub_jaxprs(eqn):
  """(jaxpr, times it runs per run of eqn) for each body inside eqn."""
  times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr, times
      elif isinstance(item, jex_core.Jaxpr):
        yield item, times


def count_dots(jaxpr, times: int = 1, counts=None) -> collections.Counter:
  """{(lhs shape, rhs shape, dimension_numbers, dtype, out dtype): count}."""
  counts = collections.Counter() if counts is None else counts
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      lhs, rhs = (v.aval for v in eqn.invars)
      key = (lhs.shape, rhs.shape, eqn.params["dimension_numbers"], lhs.dtype, rhs.dtype,
             eqn.outvars[0].aval.dtype)
      counts[key] += times
    for sub, sub_times in _sub_jaxprs(eqn):
      count_dots(sub, times * sub_times, counts)
  return counts


def dot_flops(key) -> int:
  """2 x (lhs elements) x (rhs elements neither contracted nor batched)."""
  lhs_shape, rhs_shape, ((_, rhs_contract), (_, rhs_batch)), *_ = key
  rhs_free = [size for axis, size in enumerate(rhs_shape)
              if axis not in rhs_contract and axis not in rhs_batch]
  return 2 * math.prod(lhs_shape) * math.prod(rhs_free)


def time_dot(key, repeats: int) -> float:
  lhs_shape, rhs_shape, dims, lhs_dtype, rhs_dtype, out_dtype = key
  k_lhs, k_rhs = jax.random.split(jax.random.key(0))
  lhs = jax.random.normal(k_lhs, lhs_shape, lhs_dtype)
  rhs = jax.random.normal(k_rhs, rhs_shape, rhs_dtype)
  dot = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=out_dtype))
  return median_call_seconds(dot, lhs, rhs, repeats=repeats)


def step_dots(name: str) -> collections.Counter:
  """The dot_generals of one training step of shape `name`, remat off."""
  config = model_config(SHAPES[name], ScanImpl.LINEAR, Remat.NONE)
  graphdef, params, rest = nnx.split(Griffin(config, nnx.Rngs(0)), nnx.Param, ...)
  tokens_BT, pos_BT = inputs(SHAPES[name])

  def loss(params):
    logits_BTV, _ = nnx.merge(graphdef, params, rest)(tokens_BT, pos_BT)
    return next_token_loss(logits_BTV, tokens_BT, pos_BT)

  return count_dots(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  for name in _CONFIGS.value:
    if name not in SHAPES:
      raise ValueError(f"--configs: unknown shape {name!r}; valid: {', '.join(SHAPES)}")
  rate = matmul_gflops()
  print("| config | matmuls (distinct) | GFLOP | bound s | GFLOP/s at the bound | "
        "% of the 2048^3 matmul | slowest shape (lhs x rhs): share of the bound |")
  print("|---|---:|---:|---:|---:|---:|---|")
  for name in _CONFIGS.value:
    counts = step_dots(name)
    print(f"{name}: timing {len(counts)} distinct matmuls ...", file=sys.stderr, flush=True)
    seconds = {key: count * time_dot(key, _REPEATS.value) for key, count in counts.items()}
    bound = sum(seconds.values())
    gflop = sum(count * dot_flops(key) for key, count in counts.items()) / 1e9
    worst = max(seconds, key=seconds.get)
    print(f"| {name} | {sum(counts.values())} ({len(counts)}) | {gflop:.1f} | {bound:.3f} | "
          f"{gflop / bound:.1f} | {100 * gflop / bound / rate:.1f} | "
          f"{worst[0]} x {worst[1]}: {100 * seconds[worst] / bound:.0f}% |")
  print(f"\nf32 matmul 2048^3: {rate:.1f} GFLOP/s")


if __name__ == "__main__":
  app.run(main)
