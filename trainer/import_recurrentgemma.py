"""Convert an official recurrentgemma checkpoint (its Orbax parameter tree and
its SentencePiece tokenizer) into this project's checkpoint format.

    python -m trainer.import_recurrentgemma \\
        --checkpoint=/path/recurrentgemma_2b --tokenizer=/path/tokenizer.model \\
        --preset=RECURRENT_GEMMA_2B_V1 --workdir=DIR_OR_GS_PATH [--config=configs/X.py]

The workdir then holds `checkpoints/0` (parameters only, and the run config
with the converted model and `data.tokenizer` set to the copied tokenizer), so
`trainer.evaluate` and `trainer.sample` read it as they read our own runs, and
`trainer.train --init_params_from=<workdir>/checkpoints/0` fine-tunes it.
`--config` supplies every section but the model (default: the built-in
defaults on the stdlib corpus).
"""

from absl import flags

from common import cli, config_flag
from trainer import config as config_lib

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "recurrentgemma Orbax checkpoint dir.",
                                  required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Its SentencePiece .model file.",
                                 required=True)
_PRESET = flags.DEFINE_string("preset", "RECURRENT_GEMMA_2B_V1",
                              "recurrentgemma Preset whose embedding scale, attention "
                              "window and logit soft-cap the weights were trained with "
                              "(the tree's shapes give the rest).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write; must hold no checkpoint.",
                               required=True)
_CONFIG = config_flag.define_config_flag()


def main():
  from trainer.import_recurrentgemma_lib import import_checkpoint  # after flag parsing: JAX is slow to import
  base = config_flag.flag_config(_CONFIG, required=False) or config_lib.defaults()
  path = import_checkpoint(_CHECKPOINT.value, _TOKENIZER.value, _PRESET.value,
                           _WORKDIR.value, base)
  print(f"imported {_CHECKPOINT.value} to {path}")


if __name__ == "__main__":
  cli.run(main)
