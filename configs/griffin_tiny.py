"""Griffin, tiny: (R, R, A) blocks with local attention, CPU-sized.

Width 128, depth 6 (two scanned groups), vocab 256, head_dim 64, window 32, on
the embedded stdlib corpus.

Command to run:
  python -m trainer.train --config=configs/griffin_tiny.py --workdir=/tmp/griffin_tiny
  python -m trainer.evaluate --workdir=/tmp/griffin_tiny

Expected: byte-level (vocab 256) rows of the stdlib source; validation loss
~2.1 after 200 steps (measured with an earlier training loop on
the same rows: Griffin 2.12, Hawk 2.37, MQA 2.29; ~1.5-3 minutes on 2 cores).
"""

from trainer import config as config_lib


def get_config():
  cd = config_lib.defaults()
  cd.model.block_pattern = "RRA"
  cd.model.vocab_size = 256
  cd.model.width = 128
  cd.model.lru_width = 128
  cd.model.depth = 6
  cd.model.head_dim = 64
  cd.model.gate_blocks = 4
  cd.model.attention_window = 32
  cd.data.seq_len = 256
  cd.optimizer.warmup_steps = 20
  cd.run.steps = 200
  cd.run.log_every_steps = 50
  return cd
