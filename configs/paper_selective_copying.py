"""Selective copying (paper §6.2, App. H): a ~250K-parameter Griffin, CPU-sized.

Model as in App. H: 5 residual blocks of width 64, Griffin's one local
attention layer in block 3 (R R A R R), RG-LRU width 64 with 16 gate blocks,
4 query heads of 16: 252,736 parameters (Hawk 255,936, MQA 239,936). Task:
16 data tokens of a vocabulary of 16 (+ NOISE, COPY) to copy; loss and
accuracy only on the 16 answers (pipeline/synthetic.py, docs/data.md).

CPU-sized: rows of 64 tokens (the paper: 1024) and Griffin's window 32 (the
paper: 512, half the row). The paper's length: --config.data.seq_len=1024
--config.model.attention_window=512 (about 3 s a step here at batch 16).

Command to run (the other families by override):
  python -m trainer.train --config=configs/paper_selective_copying.py --workdir=/tmp/copy_griffin
  python -m trainer.train --config=configs/paper_selective_copying.py --workdir=/tmp/copy_hawk \\
      --config.model.block_pattern=R
  python -m trainer.train --config=configs/paper_selective_copying.py --workdir=/tmp/copy_mqa \\
      --config.model.block_pattern=A --config.model.attention_window=None
  python -m trainer.evaluate --workdir=/tmp/copy_griffin --length_multiple=0
All three, stopping each once solved: python -m experiments.paper.selective_copying.

Expected: validation accuracy (eval_accuracy in metrics.jsonl) near 1/16 at
first; MQA and Griffin pass 95% within ~1,500 steps, Hawk learns slowest
(docs/results.md has the measured table and wall times).
"""

from trainer import config as config_lib


def get_config():
  cd = config_lib.defaults()
  cd.data.dataset = "selective_copying"
  cd.data.seq_len = 64
  cd.data.global_batch_size = 32
  cd.model.vocab_size = 18  # 16 data tokens + NOISE + COPY
  cd.model.width = 64
  cd.model.depth = 5
  cd.model.lru_width = 64
  cd.model.gate_blocks = 16
  cd.model.head_dim = 16
  cd.model.block_pattern = "RRARR"
  cd.model.attention_window = 32
  cd.model.scan_impl = "associative"  # as fast as lax.scan here, faster on long rows
  cd.optimizer.learning_rate = 1e-2
  cd.optimizer.warmup_steps = 50
  cd.optimizer.weight_decay = 0.0
  cd.run.steps = 3000
  cd.run.log_every_steps = 100
  cd.run.eval_every_steps = 100
  cd.run.eval_steps = 4  # 128 rows, 2,048 answers
  cd.checkpoint.save_every_steps = 3000
  return cd
