"""MQA Transformer baseline, tiny: `griffin_tiny` with global multi-query
attention in every block (two query heads of 64, one K/V head).

Width 128, depth 6, vocab 256 (bytes), on the embedded stdlib corpus.

Command to run:
  python -m trainer.smoke --config=configs/mqa_tiny.py

Expected: ~1.5 minutes on 2 CPU cores; validation loss ~5.9 at init -> ~2.29
after 200 steps; "smoke run OK".
"""

from configs import griffin_tiny


def get_config():
  cd = griffin_tiny.get_config()
  cd.model.block_pattern = "A"
  cd.model.attention_window = None  # global attention
  return cd
