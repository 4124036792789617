"""lm-eval scores what the model learned: a tiny Griffin trained on the
induction-heads task (pipeline/synthetic.py) answers an lm-eval
multiple-choice task built from that task's validation rows near 100%; the
same model untrained is near chance (1/16)."""

import jax
import numpy as np
from flax import nnx
from lm_eval import evaluator

from model.griffin import Griffin
from pipeline import synthetic
from tests.test_lm_eval import MEAN, write_task  # sets the offline environment first
from tests.test_trainer import make_config
from trainer import lm_eval_lib, lm_eval_tasks
from trainer.train_lib import make_train_iterator
from trainer.train_loop import run_steps

T, ROWS = 16, 64
INDUCTION_MC = {  # the row up to its second TRIGGER; choices: the 16 data tokens
    "output_type": "multiple_choice", "doc_to_text": "{{context}}",
    "doc_to_choice": [str(i) for i in range(synthetic.DATA_VOCAB)],
    "doc_to_target": "answer", "metric_list": [{"metric": "acc", **MEAN}]}


def induction_rows():
  """Validation rows (never trained on) as {"context": "3 9 ... 16", "answer": x}."""
  tokens_NT = synthetic.rows(synthetic.INDUCTION_HEADS, "validation", T, 0, 0, ROWS)["tokens"]
  return [{"context": " ".join(map(str, row[:-1])), "answer": int(row[-1])} for row in tokens_NT]


def test_induction_heads_trained_near_100_percent_untrained_near_chance(tmp_path):
  # R then A, constant lr 1e-2: solved within 90-120 steps for seeds 0-2.
  config = make_config(**{
      "data.dataset": synthetic.INDUCTION_HEADS, "model.vocab_size": 17, "data.seq_len": T,
      "data.global_batch_size": 64, "model.width": 32, "model.lru_width": 32,
      "model.depth": 2, "model.block_pattern": "RA", "model.head_dim": 16,
      "model.attention_window": T, "model.remat": "none", "run.steps": 120,
      "run.log_every_steps": 40, "checkpoint.save_every_steps": 120,
      "optimizer.learning_rate": 1e-2, "optimizer.warmup_steps": 10,
      "optimizer.end_lr_fraction": 1.0})
  run_steps(config, str(tmp_path / "run"), make_train_iterator(config))
  write_task(tmp_path, "induction_mc", induction_rows(), INDUCTION_MC)
  manager = lm_eval_tasks.task_manager(["induction_mc"], str(tmp_path / "tasks"), False)
  lm = lm_eval_lib.load_lm(str(tmp_path / "run"), batch_size=64)
  assert lm.get_model_info()["step"] == 120 and lm.buckets == (T,)

  def accuracy():
    results = evaluator.simple_evaluate(model=lm, tasks=["induction_mc"], task_manager=manager,
                                        bootstrap_iters=0, log_samples=False)
    return results["results"]["induction_mc"]["acc,none"]

  trained = accuracy()
  untrained = nnx.state(Griffin(config.model, nnx.Rngs(config.run.seed)))
  lm.params = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding),
                           untrained, lm.params)
  at_init = accuracy()
  assert trained >= 0.9, trained
  assert at_init <= 0.25, at_init  # chance: 1/16 = 0.0625; 64 rows
  assert lm.compiles() == 1
  np.testing.assert_array_less(at_init, trained)
