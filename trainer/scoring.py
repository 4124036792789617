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
    """(sum_T, count_T, correct_T) in float64 / int64 / int64 over
    `num_batches` host batches."""
    sum_T = np.zeros(seq_len)
    count_T, correct_T = np.zeros(seq_len, np.int64), np.zeros(seq_len, np.int64)
    with jax.set_mesh(self.mesh), rules.activation_rules():
      for _ in range(num_batches):
        s_T, n_T, c_T = jax.device_get(self._by_position(
            params, *device_batch(self.row, next(batches))))
        sum_T += s_T
        count_T += n_T
        correct_T += c_T
    return sum_T, count_T, correct_T


def score_sources(scorer: Scorer, params, batches, num_batches: int, seq_len: int):
  """`scorer` over `batches`, an iterator or {source: iterator}: the sums over
  all of them, and {source: summary} when there are several sources."""
  if not isinstance(batches, dict):
    return scorer(params, batches, num_batches, seq_len), {}
  by_source = {name: scorer(params, it, num_batches, seq_len) for name, it in batches.items()}
  total = tuple(sum(parts) for parts in zip(*by_source.values()))
  if len(by_source) == 1:
    return total, {}
  return total, {name: summary(*sums) for name, sums in by_source.items()}


def summary(sum_T, count_T, correct_T) -> dict:
  """Mean NLL, perplexity, the number of targets, and next-token accuracy
  (the fraction whose argmax is the target)."""
  count = max(int(count_T.sum()), 1)
  loss = float(sum_T.sum() / count)
  return {"loss": loss, "perplexity": math.exp(loss), "tokens": int(count_T.sum()),
          "accuracy": float(correct_T.sum() / count)}
