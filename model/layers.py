"""Small layers shared by the blocks: parameters with logical axes, linear,
RMSNorm, the tied embedding."""

import flax.core.spmd
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec


def param(value: jax.Array, axes: tuple[str | None, ...]) -> nnx.Param:
  """A parameter annotated with logical axis names (None = never sharded).

  The names are mapped to mesh axes by the one rules table in `sharding/`;
  the model never names a mesh axis.
  """
  if len(axes) != value.ndim:
    raise ValueError(f"axes {axes} do not match a parameter of shape {value.shape}")
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  """Pins an activation's layout by logical axis names.

  A no-op unless the caller entered a mesh (`jax.set_mesh`) and the rules
  table (`sharding.rules.activation_rules()`); the model never names mesh axes.
  """
  rules = flax.core.spmd.get_logical_axis_rules()
  if not rules or jax.sharding.get_abstract_mesh().empty:
    return x
  table = dict(rules)
  return jax.lax.with_sharding_constraint(
      x, PartitionSpec(*(None if a is None else table[a] for a in axes)))


def _mesh_axes(value) -> tuple[str, ...]:
  """A rules-table value (None, an axis, or a tuple of axes) as a tuple."""
  return () if value is None else (value,) if isinstance(value, str) else tuple(value)


def gathered(weight: nnx.Param, dtype=None) -> jax.Array:
  """A weight as a layer computes with it: cast to `dtype` (if given), then
  whole along the mesh axes that also split the batch (ZeRO-3: stored split
  over them, all-gathered per layer for use, the gradient reduce-scattered
  back); its tensor-parallel axes stay split. The partitioner chooses this
  plan for our configs anyway; pinned so that it does not depend on that
  choice. Cast first, so a bf16 model gathers bf16. Without a mesh and
  rules, just the cast."""
  value = weight[...] if dtype is None else weight[...].astype(dtype)
  rules = flax.core.spmd.get_logical_axis_rules()
  if not rules or jax.sharding.get_abstract_mesh().empty:
    return value
  table = dict(rules)
  batch_axes = set(_mesh_axes(table["batch"]))
  # A scanned layer sees one slice of its group's stack, whose names lead
  # with "layers".
  spec = []
  for name in weight.get_metadata()["out_sharding"][-value.ndim:]:
    axes = [a for a in _mesh_axes(table[name] if name else None) if a not in batch_axes]
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return jax.lax.with_sharding_constraint(value, PartitionSpec(*spec))


def fan_in_normal(key, shape, fan_in: int, scale: float = 1.0) -> jax.Array:
  """Variance-scaling normal init, std = sqrt(scale / fan_in) (LeCun at scale 1)."""
  return jax.random.normal(key, shape, jnp.float32) * jnp.sqrt(scale / fan_in)


def lead(v: jax.Array, ndim: int) -> jax.Array:
  """`v` with leading unit axes up to `ndim` (tests forbid implicit rank promotion)."""
  return v.reshape((1,) * (ndim - v.ndim) + v.shape)


class Linear(nnx.Module):
  """y = x W + b, with W of shape (d_in, d_out)."""

  def __init__(self, d_in: int, d_out: int, *, axes: tuple[str | None, str | None],
               use_bias: bool, init_scale: float, dtype, rngs: nnx.Rngs):
    self.kernel = param(fan_in_normal(rngs.params(), (d_in, d_out), d_in, init_scale), axes)
    self.bias = param(jnp.zeros((d_out,)), axes[1:]) if use_bias else None
    self.dtype = dtype

  def __call__(self, x):
    y = jnp.dot(x.astype(self.dtype), gathered(self.kernel, self.dtype))
    if self.bias is not None:
      y = y + lead(self.bias[...].astype(self.dtype), y.ndim)
    return y


class RMSNorm(nnx.Module):
  """x / rms(x) * (1 + scale); scale starts at zero so the gain starts at one."""

  def __init__(self, width: int, *, eps: float, dtype):
    self.scale = param(jnp.zeros((width,)), ("embed",))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x_BTD):
    # Statistics in f32: a bf16 mean of squares loses the small channels.
    x_BTD = x_BTD.astype(jnp.float32)
    var_BT1 = jnp.mean(jnp.square(x_BTD), axis=-1, keepdims=True)
    y_BTD = x_BTD * jax.lax.rsqrt(var_BT1 + self.eps) * lead(1.0 + self.scale[...], x_BTD.ndim)
    return y_BTD.astype(self.dtype)


def _logits(x_BTD, e_VD):
  return jnp.einsum("BTD,VD->BTV", x_BTD, e_VD, preferred_element_type=jnp.float32)


@jax.custom_vjp
def tied_logits(x_BTD, e_VD):
  """x E^T in f32, whose embedding gradient is computed as (D, V) = x^T g.

  Plain autodiff asks for dE = g^T x; XLA:CPU then copies g (B*T x V, the
  largest array of the step) into V-major order, a strided transpose fused
  with the softmax gradient that took ~0.35 s of a 2.3 s step at V = 8192,
  T*B = 4096. Computing (D, V) reads g in its own order and transposes only
  the D x V result. The barrier keeps XLA from folding that transpose back
  into the dot. The same products and sums as autodiff's, up to f32
  summation order.
  """
  return _logits(x_BTD, e_VD)


def _tied_logits_fwd(x_BTD, e_VD):
  return _logits(x_BTD, e_VD), (x_BTD, e_VD)


def _tied_logits_bwd(res, g_BTV):
  x_BTD, e_VD = res
  dx_BTD = jnp.einsum("BTV,VD->BTD", g_BTV, e_VD, preferred_element_type=jnp.float32)
  # Written out, not jax.vjp: autodiff's transpose rule puts g first, g^T x.
  de_DV = jnp.einsum("BTD,BTV->DV", x_BTD, g_BTV, preferred_element_type=jnp.float32)
  de_DV = jax.lax.optimization_barrier(de_DV)
  return dx_BTD.astype(x_BTD.dtype), de_DV.T.astype(e_VD.dtype)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


class Embedder(nnx.Module):
  """Token embedding, tied with the output layer (paper §2)."""

  def __init__(self, vocab_size: int, width: int, *, scale_by_sqrt_dim: bool,
               soft_cap: float, dtype, rngs: nnx.Rngs):
    self.embedding = param(
        fan_in_normal(rngs.params(), (vocab_size, width), width), ("vocab", "embed"))
    # RecurrentGemma rounds sqrt(D) to bf16 (the value it was trained with).
    # (numpy, not jnp: this runs under jit/eval_shape when the model is built.)
    self.input_scale = (float(np.asarray(np.sqrt(width), ml_dtypes.bfloat16))
                        if scale_by_sqrt_dim else 1.0)
    self.soft_cap = soft_cap
    self.dtype = dtype

  def encode(self, tokens_BT):
    x_BTD = jnp.take(self.embedding[...], tokens_BT, axis=0).astype(self.dtype)
    return x_BTD * self.input_scale if self.input_scale != 1.0 else x_BTD

  def decode(self, x_BTD):
    """Logits in f32, soft-capped as c * tanh(logits / c) when c > 0."""
    logits_BTV = tied_logits(x_BTD.astype(self.dtype), self.embedding[...].astype(self.dtype))
    if self.soft_cap > 0:
      logits_BTV = jnp.tanh(logits_BTV / self.soft_cap) * self.soft_cap
    return constrain(logits_BTV, ("batch", "length", "vocab"))


class MLPBlock(nnx.Module):
  """Gated MLP (paper §2.2): down(gelu(x W_gate) * (x W_up)), hidden F = 3D."""

  def __init__(self, width: int, hidden: int, *, gelu_tanh: bool,
               out_init_scale: float, dtype, rngs: nnx.Rngs):
    # Gate and up projections stacked as (D, 2, F): [:, 0] is the GeLU branch.
    # D leads so the weight is a plain [D, 2F] matrix to the matmul (a (2, D, F)
    # weight is transposed on every call: on CPU that copy dominated decoding).
    # Drawn as recurrentgemma's (2, D, F) with its stacked fan-in (2D).
    up_2DF = fan_in_normal(rngs.params(), (2, width, hidden), 2 * width)
    self.up = param(jnp.transpose(up_2DF, (1, 0, 2)), ("embed", None, "mlp"))
    self.up_bias = param(jnp.zeros((2, hidden)), (None, "mlp"))
    self.down = Linear(hidden, width, axes=("mlp", "embed"), use_bias=True,
                       init_scale=out_init_scale, dtype=dtype, rngs=rngs)
    self.gelu_tanh = gelu_tanh
    self.dtype = dtype

  def __call__(self, x_BTD):
    up_BT2F = jnp.einsum("BTD,DCF->BTCF", x_BTD.astype(self.dtype),
                         gathered(self.up, self.dtype))
    up_BT2F = up_BT2F + lead(self.up_bias[...].astype(self.dtype), 4)
    h_BTF = jax.nn.gelu(up_BT2F[:, :, 0], approximate=self.gelu_tanh) * up_BT2F[:, :, 1]
    h_BTF = constrain(h_BTF, ("batch", "length", "mlp"))
    return self.down(h_BTF)
