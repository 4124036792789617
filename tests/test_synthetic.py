"""The synthetic tasks (pipeline/synthetic.py) and the loss mask they need:
rows from the seed, the layouts, host split, resume, the mask in the loss and
its gradients, accuracy, and a tiny train + evaluate through the real loop."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import streams
from pipeline import synthetic
from pipeline.config import DataConfig
from trainer.evaluate_lib import evaluate
from trainer.loss import (next_token_correct_by_position, next_token_loss,
                          next_token_nll_by_position)
from trainer.train_lib import make_eval_iterator, make_tokenizer, make_train_iterator
from trainer.train_loop import run_steps
from tests.test_trainer import make_config

COPYING, INDUCTION = synthetic.SELECTIVE_COPYING, synthetic.INDUCTION_HEADS


def data_config(dataset, seq_len=64, batch=4, seed=0):
  return DataConfig(dataset=dataset, seq_len=seq_len, global_batch_size=batch, shuffle_seed=seed)


@pytest.mark.parametrize("dataset", [COPYING, INDUCTION])
def test_rows_come_from_the_seed_and_the_split(dataset):
  rows = lambda split, seed, start=0: synthetic.rows(dataset, split, 64, seed, start, 8)
  np.testing.assert_array_equal(rows("train", 3)["tokens"], rows("train", 3)["tokens"])
  # Row i is the same whichever batch asks for it.
  np.testing.assert_array_equal(rows("train", 3)["tokens"][5:], rows("train", 3, 5)["tokens"][:3])
  assert not np.array_equal(rows("train", 3)["tokens"], rows("train", 4)["tokens"])
  assert not np.array_equal(rows("train", 0)["tokens"], rows("validation", 0)["tokens"])
  # Validation is one stream, whatever the run's seed.
  np.testing.assert_array_equal(rows("validation", 0)["tokens"], rows("validation", 9)["tokens"])


def test_selective_copying_layout():
  T, M = 100, synthetic.COPY_TOKENS
  batch = synthetic.rows(COPYING, "train", T, 0, 0, 32)
  for tokens_T, mask_T, pos_T in zip(batch["tokens"], batch["loss_mask"], batch["segment_pos"]):
    context_C, answers_M = tokens_T[:T - M - 1], tokens_T[T - M:]
    assert tokens_T[T - M - 1] == synthetic.COPY
    data = context_C[context_C != synthetic.NOISE]
    assert len(data) == M and data.max() < synthetic.DATA_VOCAB
    np.testing.assert_array_equal(answers_M, data)  # in context order
    np.testing.assert_array_equal(mask_T, np.arange(T) >= T - M)  # only the answers
    np.testing.assert_array_equal(pos_T, np.arange(T))  # one document per row
  assert batch["tokens"].dtype == batch["loss_mask"].dtype == np.int32
  # The data tokens land anywhere in the context, not only in one place.
  assert len(np.unique(np.nonzero(batch["tokens"][:, :T - M - 1] != synthetic.NOISE)[1])) > 50


def test_induction_heads_layout():
  T = 40
  batch = synthetic.rows(INDUCTION, "train", T, 0, 0, 64)
  firsts = []
  for tokens_T, mask_T in zip(batch["tokens"], batch["loss_mask"]):
    triggers = np.nonzero(tokens_T == synthetic.TRIGGER)[0]
    assert len(triggers) == 2 and triggers[1] == T - 2 and triggers[0] <= T - 4
    assert tokens_T[-1] == tokens_T[triggers[0] + 1] < synthetic.DATA_VOCAB
    np.testing.assert_array_equal(mask_T, np.arange(T) == T - 1)
    firsts.append(triggers[0])
  assert tokens_T.max() <= synthetic.TRIGGER and tokens_T.min() >= 0
  assert min(firsts) < 10 and max(firsts) > T - 14  # spread over the row


@pytest.mark.parametrize("dataset", [COPYING, INDUCTION])
def test_hosts_split_identical_global_batches(dataset):
  config = data_config(dataset)
  vocab = synthetic.VOCAB_SIZE[dataset]
  one = streams.train_stream(config, vocab, 0, 1)
  two = [streams.train_stream(config, vocab, i, 2) for i in range(2)]
  for _ in range(3):
    whole = next(one)
    halves = [next(it) for it in two]
    for key in ("tokens", "segment_pos", "loss_mask"):
      np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]))


def test_the_iterator_resumes_exactly_and_refuses_another_pipeline():
  config = data_config(INDUCTION)
  vocab = synthetic.VOCAB_SIZE[INDUCTION]
  straight = streams.train_stream(config, vocab, 0, 1)
  expected = [next(straight)["tokens"] for _ in range(5)]
  first = streams.train_stream(config, vocab, 0, 1)
  for _ in range(3):
    next(first)
  state = json.loads(json.dumps(first.get_state()))  # as saved to disk
  resumed = streams.train_stream(config, vocab, 0, 1)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["tokens"], expected[3])
  np.testing.assert_array_equal(next(resumed)["tokens"], expected[4])
  other = streams.train_stream(dataclasses.replace(config, seq_len=32), vocab, 0, 1)
  with pytest.raises(ValueError, match="data.seq_len=64 and this run has data.seq_len=32"):
    other.set_state(state)


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match=r"data.seq_len=32 is too short for "
                     r"data.dataset='selective_copying'.*at least 33"):
    data_config(COPYING, seq_len=32)
  with pytest.raises(ValueError, match=r"model.vocab_size=256 does not match "
                     r"data.dataset='induction_heads', whose vocabulary is 17"):
    make_train_iterator(make_config(**{"data.dataset": INDUCTION}))
  with pytest.raises(ValueError, match="vocabulary is 18 .*NOISE=16, COPY=17"):
    make_tokenizer(make_config(**{"data.dataset": COPYING, "data.seq_len": 40}))
  tokenizer = make_tokenizer(make_config(**{"data.dataset": INDUCTION, "model.vocab_size": 17}))
  assert tokenizer.encode_batch(["3 16 7"]) == [[3, 16, 7]]
  assert tokenizer.decode([3, 16, 7]) == "3 16 7"


def _masked_case():
  B, T, V = 2, 9, 5
  logits_BTV = jax.random.normal(jax.random.key(0), (B, T, V))
  tokens_BT = jax.random.randint(jax.random.key(1), (B, T), 0, V)
  segment_pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
  mask_BT = jnp.zeros((B, T), jnp.int32).at[:, 5:].set(1).at[1, 7].set(0)
  return logits_BTV, tokens_BT, segment_pos_BT, mask_BT


def test_targets_outside_the_mask_change_neither_loss_nor_gradients():
  logits_BTV, tokens_BT, segment_pos_BT, mask_BT = _masked_case()
  loss_and_grad = jax.value_and_grad(next_token_loss)
  loss, grad_BTV = loss_and_grad(logits_BTV, tokens_BT, segment_pos_BT, 0.0, mask_BT)
  # Other targets where the mask is 0: same loss and gradient.
  other_BT = jnp.where(mask_BT == 0, (tokens_BT + 1) % 5, tokens_BT)
  loss2, grad2_BTV = loss_and_grad(logits_BTV, other_BT, segment_pos_BT, 0.0, mask_BT)
  assert loss == loss2
  np.testing.assert_array_equal(grad_BTV, grad2_BTV)
  # The loss is the mean over exactly the counted targets (7 of them).
  log_p_BTV = jax.nn.log_softmax(logits_BTV[:, :-1])
  nll_BT = -jnp.take_along_axis(log_p_BTV, tokens_BT[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(loss, jnp.sum(nll_BT * mask_BT[:, 1:]) / 7, rtol=1e-6)
  # Predictions of uncounted targets get no gradient; counted ones do.
  predicts_counted_BT = mask_BT[:, 1:] != 0
  assert not np.any(grad_BTV[:, :-1][~predicts_counted_BT])
  assert np.all(np.abs(grad_BTV[:, :-1][predicts_counted_BT]).sum(-1) > 0)
  # No mask and an all-ones mask are the same objective.
  np.testing.assert_array_equal(next_token_loss(logits_BTV, tokens_BT, segment_pos_BT),
                                next_token_loss(logits_BTV, tokens_BT, segment_pos_BT, 0.0,
                                                jnp.ones_like(tokens_BT)))


def test_accuracy_counts_argmax_hits_over_counted_targets():
  logits_BTV, tokens_BT, segment_pos_BT, mask_BT = _masked_case()
  # Make the prediction of target (0, 6) right and of (1, 6) wrong.
  logits_BTV = logits_BTV.at[0, 5, tokens_BT[0, 6]].set(100.0)
  logits_BTV = logits_BTV.at[1, 5, tokens_BT[1, 6]].set(-100.0)
  correct_T = next_token_correct_by_position(logits_BTV, tokens_BT, segment_pos_BT, mask_BT)
  _, count_T = next_token_nll_by_position(logits_BTV, tokens_BT, segment_pos_BT, mask_BT)
  np.testing.assert_array_equal(count_T, [0, 0, 0, 0, 0, 2, 2, 1, 2])
  assert correct_T[6] == 1 and np.all(correct_T <= count_T)
  hits_BT = (jnp.argmax(logits_BTV[:, :-1], -1) == tokens_BT[:, 1:]) & (mask_BT[:, 1:] != 0)
  assert int(correct_T.sum()) == int(hits_BT.sum())


def test_train_and_evaluate_a_tiny_model_on_induction_heads(tmp_path):
  config = make_config(**{
      "data.dataset": INDUCTION, "model.vocab_size": 17, "data.seq_len": 16,
      "model.width": 32, "model.lru_width": 32, "model.depth": 3, "model.head_dim": 16,
      "model.attention_window": 8, "run.steps": 4, "run.eval_every_steps": 2,
      "run.eval_steps": 1, "checkpoint.save_every_steps": 4})
  history = run_steps(config, str(tmp_path), make_train_iterator(config),
                      eval_data=lambda: make_eval_iterator(config, 1))
  assert [h["step"] for h in history] == [1, 2, 3, 4]
  assert all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in history)
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records if "eval_accuracy" in r] == [2, 4]
  result = evaluate(str(tmp_path), None, 2, make_eval_iterator, {}, length_multiple=2)
  assert result["tokens"] == 2 * 8  # one counted target per row: the answer
  assert 0 <= result["accuracy"] <= 1
  by_position = result["by_position"]
  assert by_position["seq_len"] == 32 and by_position["count"][31] == 16
  assert sum(by_position["count"]) == 16 and sum(by_position["correct"]) <= 16
  assert by_position["accuracy"] == sum(by_position["correct"]) / 16
