"""Checksums of every saved array, written with the step and verified when it
is read back, so that silent corruption (flipped bytes in a file of the right
size) is named instead of restored.

Why our own: Orbax writes a CRC32C only over the zarr3 shard index
(`tensorstore_utils._build_zarr3_metadata`), not over the chunks, and OCDBT
checksums its tree nodes but not the values; neither has an option for the
data. The checksum is taken on device, over the global array, so it is the
same whatever the mesh at save and at restore (a step saved on 8 devices
verifies on 4), and it also catches a wrong restore, not only bad storage.

Per array, over its bits as 32-bit words w_i (i = 0 .. n-1, row-major):
  checksum = sum (2 i + 1) w_i mod 2^32.
Integer sums are exact in any order, hence the mesh independence. Any change
of a single word changes it (odd weights are invertible mod 2^32), swapped
words too; several changed words cancel with odds of about 2^-32. It is a
corruption check, not a defence against tampering. One reduction per array,
all in one program: its compile is most of the cost (about 1 s for a small
Griffin's state on CPU), paid once per state structure.
"""

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "griffin-checksum-v2"


class CorruptCheckpointError(ValueError):
  """A step's arrays do not match their checksums, or cannot be read."""


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as a flat uint32 vector (16- and 8-bit values widened,
  64-bit ones split into two words)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
  if size in (1, 2):
    unsigned = jnp.uint8 if size == 1 else jnp.uint16
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
  raise ValueError(f"no checksum for arrays of dtype {x.dtype}")


@jax.jit
def _sums(tree) -> jax.Array:
  """The checksum of every array of `tree`, in its leaves' order."""
  def one(x):
    w = _words(x)
    return jnp.sum(w * (2 * jnp.arange(w.shape[0], dtype=jnp.uint32) + 1), dtype=jnp.uint32)
  return jnp.stack([one(x) for x in jax.tree.leaves(tree)])


def name(path) -> str:
  """A tree path as the slash-joined names Orbax's metadata uses."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)


def checksums(tree) -> dict:
  """{"format": FORMAT, "arrays": {name: checksum}} of every array of `tree`
  (the JSON saved with a step)."""
  sums = np.asarray(jax.device_get(_sums(tree)))
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  return {"format": FORMAT, "arrays": {name(p): int(v) for p, v in zip(paths, sums)}}


def verify(saved: dict, tree, where: str, prefix: str = ""):
  """CorruptCheckpointError naming the first array of `tree` whose checksum
  differs from `saved` (`checksums()` of the step as written). `prefix` is
  the path of `tree` inside the saved tree ("params/" for parameters only)."""
  if saved.get("format") != FORMAT:
    raise CorruptCheckpointError(f"{where}: checksums in an unknown format "
                                 f"{saved.get('format')!r} (this code writes {FORMAT!r})")
  got = checksums(tree)["arrays"]
  for key, value in got.items():
    want = saved["arrays"].get(prefix + key)
    if want is None:
      raise CorruptCheckpointError(f"{where}: {prefix + key} has no saved checksum")
    if value != want:
      raise CorruptCheckpointError(
          f"{where}: {prefix + key} does not match its checksum (saved {want}, read "
          f"{value}): the stored bytes changed after the save")
