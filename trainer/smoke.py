"""Model smoke run: train a tiny model for a few steps on CPU, then check that
validation loss fell and that cached decoding reproduces the forward pass.

    python -m trainer.smoke --config=configs/smoke.py [--config.a.b=v ...]

A stand-in for the main job until `trainer.train` lands (single device,
byte-level stdlib text, no checkpoint). Exits non-zero if a check fails.
"""

from absl import app, logging

from trainer import config as config_lib
from trainer.smoke_loop import run

_CONFIG = config_lib.define_config_flag()


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  run(config_lib.build(_CONFIG.value))


if __name__ == "__main__":
  app.run(main)
