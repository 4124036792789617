"""Hawk, tiny: `griffin_tiny` with recurrent blocks only (no attention).

Width 128, depth 6, vocab 256 (bytes), on the embedded stdlib corpus.

Command to run:
  python -m trainer.smoke --config=configs/hawk_tiny.py

Expected: ~3 minutes on 2 CPU cores; validation loss ~5.8 at init -> ~2.37
after 200 steps (worse than Griffin's ~2.12, as in the paper); "smoke run OK".
"""

from configs import griffin_tiny


def get_config():
  cd = griffin_tiny.get_config()
  cd.model.block_pattern = "R"
  return cd
