"""Our model as an lm-evaluation-harness language model (`TemplateLM`).

Tokenization follows lm-eval's own Hugging Face model (`HFLM`), so numbers
compare with published ones: a context is encoded with a leading BOS (as
training saw documents) and the continuation is the tail of the encoded
context + continuation (`TemplateLM._encode_pair`), so a token that merges
across the boundary belongs to the continuation. Every JAX process runs the
same requests (lm-eval sees one rank): the batches are split over the
mesh's batch axes and the outputs come back replicated.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (handle_stop_sequences, normalize_gen_kwargs,
                                  postprocess_generated_text)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from model.sampling import SamplingConfig, make_generate
from sharding import rules
from trainer.lm_eval_batches import (length_buckets, prompt_batches, score_batches,
                                     score_row)

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HFLM default


def batch_shards(mesh: jax.sharding.Mesh) -> int:
  """How many devices hold different rows of a batch on `mesh`."""
  axes = rules.batch_sharding(mesh).spec[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[axis] for axis in axes]))


def prefix_token(tokenizer) -> tuple[int, str]:
  """(id, description) of the token put before an empty context and before
  each rolling-perplexity document: BOS as in training, else EOS, else (the
  byte and synthetic tokenizers have neither) the token of "\\n", else 0."""
  if tokenizer.bos_id >= 0:
    return tokenizer.bos_id, f"BOS (id {tokenizer.bos_id})"
  if tokenizer.eos_id >= 0:
    return tokenizer.eos_id, f"EOS (id {tokenizer.eos_id})"
  newline = tokenizer.encode_batch(["\n"])[0]
  if newline:
    return newline[-1], f"the token of '\\n' (id {newline[-1]}): the tokenizer has no BOS or EOS"
  return 0, "id 0: the tokenizer has no BOS, EOS or token for '\\n'"


class GriffinLM(TemplateLM):
  """`loglikelihood`, `loglikelihood_rolling` and `generate_until` from
  `params` on `mesh`. `params` may be replaced between evaluations (training
  does so); the compiled functions are kept.

  Batches have `batch_size` rows (rounded up to a multiple of the mesh's batch
  shards) and a length from `length_buckets(max_length)`: scoring compiles at
  most once per bucket, generation once per (prompt bucket, power-of-two
  token count, sampling settings). `max_length` is the longest input: the
  training length by default, and may be longer (the RG-LRU has no length
  limit; local attention sees its window either way).
  """

  def __init__(self, graphdef: nnx.GraphDef, params, tokenizer, mesh: jax.sharding.Mesh, *,
               max_length: int, batch_size: int = 16,
               max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, seed: int = 0, info: dict | None = None):
    super().__init__()
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    self.graphdef, self.params, self.mesh = graphdef, params, mesh
    self._tokenizer = tokenizer
    self.max_length, self.max_gen_toks = max_length, max_gen_toks
    self.buckets = length_buckets(max_length)
    shards = batch_shards(mesh)
    self.batch_size = -(-batch_size // shards) * shards
    self._prefix, self.prefix_description = prefix_token(tokenizer)
    # A tokenizer without BOS (bytes, synthetic ids) gets a stand-in prefix: say which.
    log = logging.info if tokenizer.bos_id >= 0 else logging.warning
    log("lm-eval: batches of %d rows, lengths %s; empty contexts and rolling documents "
        "start with %s", self.batch_size, self.buckets, self.prefix_description)
    self._info = dict(info or {})
    self._key, self._draws = jax.random.key(seed), 0
    self._row = rules.batch_sharding(mesh)
    self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._generators = {}

    @functools.partial(jax.jit, out_shardings=self._replicated)  # every process reads them
    def score(params, tokens_BT, targets_BT, scored_BT):
      # Each row is one document from position 0 (a fresh forward pass, as HF's).
      segment_pos_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1], dtype=jnp.int32),
                                        tokens_BT.shape)
      logits_BTV, _ = nnx.merge(graphdef, params)(tokens_BT, segment_pos_BT)
      logits_BTV = logits_BTV.astype(jnp.float32)
      target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
      logprob_BT = target_logit_BT - jax.nn.logsumexp(logits_BTV, axis=-1)
      greedy_BT = jnp.argmax(logits_BTV, axis=-1) == targets_BT
      return (jnp.sum(jnp.where(scored_BT, logprob_BT, 0.0), axis=1),
              jnp.all(greedy_BT | ~scored_BT, axis=1))

    self._score = score

  # --- tokenization (lm-eval's TemplateLM contract) ---

  @property
  def eot_token_id(self) -> int:
    return self._tokenizer.eos_id if self._tokenizer.eos_id >= 0 else self._prefix

  @property
  def prefix_token_id(self) -> int:
    return self._prefix

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    """Ids of `string`, after a BOS when the tokenizer has one, unless
    `add_special_tokens` is False (TemplateLM asks so for an empty context)."""
    del kwargs
    ids = self._tokenizer.encode_batch([string])[0]
    if add_special_tokens is not False and self._tokenizer.bos_id >= 0:
      return [self._tokenizer.bos_id, *ids]
    return ids

  def get_model_info(self) -> dict:
    """Merged into the results' "config" by lm-eval."""
    return {**self._info, "max_length": self.max_length, "batch_size": self.batch_size,
            "length_buckets": list(self.buckets), "prefix_token": self.prefix_description}

  def compiles(self) -> int:
    """Programs compiled so far (scoring and generation)."""
    return self._score._cache_size() + sum(g._cache_size() for g in self._generators.values())

  # --- scoring ---

  def _put(self, x_BT: np.ndarray) -> jax.Array:
    """The same host batch on every process -> one global array split by rows."""
    return jax.make_array_from_callback(x_BT.shape, self._row, lambda index: x_BT[index])

  def _score_rows(self, rows: list) -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood float64, all-greedy bool) of each `score_row` row."""
    pending = []
    with jax.set_mesh(self.mesh), rules.activation_rules():
      for indices, *batch in score_batches(rows, self.batch_size, self.buckets):
        # Dispatch every batch before reading any: the host builds the next
        # batch while the devices score this one.
        pending.append((indices, self._score(self.params, *map(self._put, batch))))
    logprob, greedy = np.zeros(len(rows)), np.zeros(len(rows), bool)
    for indices, (logprob_B, greedy_B) in pending:
      logprob_B, greedy_B = jax.device_get((logprob_B, greedy_B))
      logprob[indices] = logprob_B[:len(indices)]
      greedy[indices] = greedy_B[:len(indices)]
    return logprob, greedy

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    """`requests`: ((context, continuation), context_ids, continuation_ids)
    -> (log-likelihood of the continuation, whether each of its tokens is the
    argmax). A context longer than `max_length` loses its oldest tokens (as
    in HF; counted in a warning); a continuation longer is refused."""
    del disable_tqdm, kwargs
    rows, truncated = [], 0
    for (context, continuation), context_ids, continuation_ids in requests:
      if len(continuation_ids) > self.max_length:
        raise ValueError(
            f"a continuation of {len(continuation_ids)} tokens ({continuation[:60]!r}...) is "
            f"longer than max_length={self.max_length}, so it cannot be scored; raise "
            "--max_length (the model has no position limit)")
      context_ids = context_ids or [self._prefix]  # e.g. bytes of a whitespace-only context
      truncated += len(context_ids) + len(continuation_ids) > self.max_length + 1
      rows.append(score_row(context_ids, continuation_ids, self.max_length))
    if truncated:
      logging.warning("lm-eval: %d of %d log-likelihood requests are longer than max_length="
                      "%d tokens; their contexts were cut from the left (--max_length takes "
                      "longer ones)", truncated, len(rows), self.max_length)
    logprob, greedy = self._score_rows(rows)
    results = [(float(lp), bool(g)) for lp, g in zip(logprob, greedy)]
    for (key, _, _), result in zip(requests, results):
      if key is not None:
        self.cache_hook.add_partial("loglikelihood", key, result)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Log-likelihood of each whole text: HF's disjoint windows of
    `max_length` tokens, each a fresh pass with one token of carried context
    (the last window is filled up with earlier tokens). The text is encoded
    without BOS and the first window starts with the prefix token (BOS), as
    training saw documents; so every text token is scored once and BOS never."""
    del disable_tqdm
    rows, owners = [], []
    for k, (text,) in enumerate(request.args for request in requests):
      tokens = self.tok_encode(text, add_special_tokens=False)
      for context_ids, predicted_ids in map(make_disjoint_window, get_rolling_token_windows(
          token_list=tokens, prefix_token=self._prefix, max_seq_len=self.max_length,
          context_len=1)):
        rows.append(score_row(context_ids, predicted_ids, self.max_length))
        owners.append(k)
    logprob, _ = self._score_rows(rows)
    totals = np.zeros(len(requests))
    np.add.at(totals, np.asarray(owners, np.int64), logprob)  # windows summed in float64
    for request, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", request.args, float(total))
    return [float(total) for total in totals]

  # --- generation ---

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Each context's continuation, cut at its first stop sequence and at
    EOS; greedy unless the request samples (`do_sample`, `temperature`,
    optional `top_k`/`top_p`). The context keeps its last `max_length` -
    `max_gen_toks` tokens, as HF's."""
    del disable_tqdm
    groups = {}  # requests that decode alike share batches
    for i, (context, gen_kwargs) in enumerate(request.args for request in requests):
      kwargs = normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.max_gen_toks)
      until = tuple(handle_stop_sequences(kwargs.pop("until", None), eos=None))
      new_tokens = kwargs.pop("max_gen_toks")
      groups.setdefault((repr(sorted(kwargs.items())), until, new_tokens),
                        (kwargs, []))[1].append(i)
    texts = [""] * len(requests)
    for (_, until, new_tokens), (kwargs, indices) in groups.items():
      if not isinstance(new_tokens, int) or not 1 <= new_tokens < self.max_length:
        raise ValueError(f"max_gen_toks={new_tokens!r} must be an integer in [1, "
                         f"max_length={self.max_length}): the context keeps max_length - "
                         "max_gen_toks tokens; raise --max_length")
      prompts = [(self.tok_encode(requests[i].args[0]) or [self._prefix])
                 [-(self.max_length - new_tokens):] for i in indices]
      for i, ids in zip(indices, self._generate(prompts, new_tokens, kwargs)):
        ids = ids[:new_tokens]
        if self._tokenizer.eos_id in ids:
          ids = ids[:ids.index(self._tokenizer.eos_id)]
        texts[i] = postprocess_generated_text(self._tokenizer.decode(ids), list(until), None)
        self.cache_hook.add_partial("generate_until", requests[i].args, texts[i])
    return texts

  def _generate(self, prompts: list[list[int]], new_tokens: int, kwargs: dict) -> list[list[int]]:
    """The new ids of each prompt: at least `new_tokens` (a power of two, so
    that requests of similar limits share one program)."""
    sampling = SamplingConfig(
        temperature=float(kwargs.get("temperature", 1.0)) if kwargs.get("do_sample") else 0.0,
        top_k=int(kwargs.get("top_k") or 0), top_p=float(kwargs.get("top_p") or 1.0),
        max_new_tokens=1 << (new_tokens - 1).bit_length())
    if sampling not in self._generators:
      self._generators[sampling] = jax.jit(make_generate(self.graphdef, sampling),
                                           out_shardings=self._replicated)
    generate, pending = self._generators[sampling], []
    with jax.set_mesh(self.mesh), rules.activation_rules():
      for indices, tokens_BT, segment_pos_BT in prompt_batches(
          prompts, self.batch_size, self.buckets, filler=[self._prefix]):
        key = jax.random.fold_in(self._key, self._draws)
        self._draws += 1
        pending.append((indices, generate(self.params, self._put(tokens_BT),
                                          self._put(segment_pos_BT), key)))
    new_ids = [None] * len(prompts)
    for indices, new_BN in pending:
      new_BN = np.asarray(jax.device_get(new_BN))
      for b, i in enumerate(indices):
        new_ids[i] = new_BN[b].tolist()
    return new_ids
