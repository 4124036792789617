"""Griffin, tiny: (R, R, A) blocks with local attention, CPU-sized.

Width 128, depth 6 (two scanned groups), vocab 256, head_dim 64, window 32, on
the embedded stdlib corpus.

Command to run:
  python -m trainer.smoke --config=configs/griffin_tiny.py

Expected: ~3 minutes on 2 CPU cores; 1,258,112 parameters; validation loss
~5.8 at init -> ~2.12 after 200 steps; "smoke run OK".
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
