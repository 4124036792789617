"""Hawk, tiny: `griffin_tiny` with recurrent blocks only (no attention).

Width 128, depth 6, vocab 256 (bytes), on the embedded stdlib corpus.

Command to run:
  python -m trainer.train --config=configs/hawk_tiny.py --workdir=/tmp/hawk_tiny
  python -m trainer.evaluate --workdir=/tmp/hawk_tiny

Expected: byte-level (vocab 256) rows of the stdlib source; validation loss
~2.4 after 200 steps (measured with an earlier training loop on
the same rows: Griffin 2.12, Hawk 2.37, MQA 2.29; ~1.5-3 minutes on 2 cores).
"""

from configs import griffin_tiny


def get_config():
  cd = griffin_tiny.get_config()
  cd.model.block_pattern = "R"
  return cd
