"""Next-token scoring of batches by document position: the sums behind the
validation loss, perplexity and accuracy, in training and in evaluation."""

import functools
import math

import jax
import numpy as np
from flax import nnx

from sharding import rules
from trainer.loss import next_token_correct_by_position, next_token_nll_by_position
from trainer.train_step import device_batch


class Scorer:
  """Sums of next-token NLL, counts of targets and of correct (argmax)
  predictions, by document position, over batches. Only targets the batch's
  `loss_mask` counts are scored (all in-document targets without one)."""

  def __init__(self, graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh):
    self.mesh = mesh
    self.row = rules.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    @functools.partial(jax.jit, out_shardings=replicated)  # every process reads them
    def by_position(params, tokens_BT, segment_pos_BT, loss_mask_BT):
      logits_BTV, _ = nnx.merge(graphdef, params)(tokens_BT, segment_pos_BT)
      sum_T, count_T = next_token_nll_by_position(logits_BTV, tokens_BT, segment_pos_BT,
                                                  loss_mask_BT)
      correct_T = next_token_correct_by_position(logits_BTV, tokens_BT, segment_pos_BT,
                                                 loss_mask_BT)
      return sum_T, count_T, correct_T

    self._by_position = by_position

  def __call__(self, params, batches, num_batches: int, seq_len: int):
    """(sum_T, count_T, correct_T, batch_B2) in float64 / int64 / int64 /
    float64 over `num_batches` host batches; batch_B2 holds each batch's
    (NLL sum, target count), for the standard error."""
    sum_T = np.zeros(seq_len)
    count_T, correct_T = np.zeros(seq_len, np.int64), np.zeros(seq_len, np.int64)
    batch_B2 = np.zeros((num_batches, 2))
    with jax.set_mesh(self.mesh), rules.activation_rules():
      for b in range(num_batches):
        s_T, n_T, c_T = jax.device_get(self._by_position(
            params, *device_batch(self.row, next(batches))))
        sum_T += s_T
        count_T += n_T
        correct_T += c_T
        batch_B2[b] = s_T.sum(), n_T.sum()
    return sum_T, count_T, correct_T, batch_B2


def score_sources(scorer: Scorer, params, batches, num_batches: int, seq_len: int):
  """`scorer` over `batches`, an iterator or {source: iterator}: the sums over
  all of them, and {source: summary} when there are several sources."""
  if not isinstance(batches, dict):
    return scorer(params, batches, num_batches, seq_len), {}
  by_source = {name: scorer(params, it, num_batches, seq_len) for name, it in batches.items()}
  *by_position, batches_B2 = zip(*by_source.values())
  total = (*(sum(parts) for parts in by_position), np.concatenate(batches_B2))
  if len(by_source) == 1:
    return total, {}
  return total, {name: summary(*sums) for name, sums in by_source.items()}


def summary(sum_T, count_T, correct_T, batch_B2=None) -> dict:
  """Mean NLL, perplexity, the number of targets, next-token accuracy (the
  fraction whose argmax is the target), and with two batches or more the
  standard error of the mean NLL, `loss_stderr`."""
  count = max(int(count_T.sum()), 1)
  loss = float(sum_T.sum() / count)
  result = {"loss": loss, "perplexity": math.exp(loss), "tokens": int(count_T.sum()),
            "accuracy": float(correct_T.sum() / count)}
  if batch_B2 is not None and len(batch_B2) > 1:
    result.update(loss_stderr=loss_stderr(batch_B2, loss), batches=len(batch_B2))
  return result


def loss_stderr(batch_B2: np.ndarray, loss: float) -> float:
  """The standard error of the mean NLL (a ratio of sums) with batches as the
  samples: tokens of one document are not independent, batches of different
  documents nearly are. The delta-method estimate, with B/(B-1)."""
  nll_B, count_B = batch_B2[:, 0], batch_B2[:, 1]
  size = len(nll_B)
  residual_B = nll_B - loss * count_B
  return float(np.sqrt(size / (size - 1) * np.sum(residual_B ** 2)) / max(count_B.sum(), 1))
