"""MQA Transformer baseline, tiny: `griffin_tiny` with global multi-query
attention in every block (two query heads of 64, one K/V head).

Width 128, depth 6, vocab 256 (bytes), on the embedded stdlib corpus.

Command to run:
  python -m trainer.train --config=configs/mqa_tiny.py --workdir=/tmp/mqa_tiny
  python -m trainer.evaluate --workdir=/tmp/mqa_tiny

Expected: byte-level (vocab 256) rows of the stdlib source; validation loss
~2.3 after 200 steps (measured with an earlier training loop on
the same rows: Griffin 2.12, Hawk 2.37, MQA 2.29; ~1.5-3 minutes on 2 cores).
"""

from configs import griffin_tiny


def get_config():
  cd = griffin_tiny.get_config()
  cd.model.block_pattern = "A"
  cd.model.attention_window = None  # global attention
  return cd
