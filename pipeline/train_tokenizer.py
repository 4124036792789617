"""Builds a run's dataset and trains its SentencePiece tokenizer beside the data.

  python -m pipeline.train_tokenizer --config=configs/smoke.py
  python -m pipeline.train_tokenizer --config=configs/smoke.py \
      --config.data.dataset=text_files --config.data.files='/data/*.jsonl'
  python -m pipeline.train_tokenizer --vocab_size=8192   # stdlib, no config

The vocabulary size is --vocab_size, else the config's model.vocab_size. The
model lands at `<dataset dir>/spm_bpe<vocab_size>.model` (local or gs://),
where runs with data.tokenizer="" look for it. Run it once before a
multi-process job: those do not build anything themselves. (The logic is
`pipeline.prepare.train_command`; this module only defines flags.)
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from pipeline import prepare as prepare_lib
from pipeline.config import DataConfig

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file in configs/; its data and model.vocab_size "
    "sections are read.", lock_config=True)
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", None, "Pieces in the tokenizer; default: the config's "
    "model.vocab_size, or 8192 without --config.")
_FORCE = flags.DEFINE_bool("force", False, "Retrain even if the tokenizer exists.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  cd = _CONFIG.value
  config = DataConfig(**cd.data.to_dict()) if cd else DataConfig()
  vocab_size = _VOCAB_SIZE.value or (cd.model.vocab_size if cd else 8192)
  print(prepare_lib.train_command(config, vocab_size, _FORCE.value))


if __name__ == "__main__":
  app.run(main)
