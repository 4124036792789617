"""Builds a run's token store: every document tokenized once (pipeline/store_build.py).

  python -m pipeline.prepare_store --config=configs/smoke.py --store=/tmp/store_smoke
  python -m pipeline.prepare_store --config=configs/smoke.py --store=/tmp/store_smoke \
      --workers=2                   # DirectRunner engine, 2 worker processes
  python -m pipeline.prepare_store --config=configs/smoke.py \
      --config.data.dataset=text_files --config.data.files='/data/*.jsonl' \
      --store=gs://BUCKET/stores/mine --workers=8 --num_shards=64

The vocabulary is the config's model.vocab_size; the tokenizer is data.tokenizer,
or a BPE trained on the train split into <store>/tokenizer.model. A finished
store (store.json) is reused; a stopped build is finished by the same command.
A bad argument or input prints one `pipeline.prepare_store: ...` line and exits 1.

Arguments after `--` go to Beam and override the defaults, e.g. for Dataflow
(`pip install build`: Beam builds the package from pyproject.toml, and the
workers install it with its dependencies):

  python -m pipeline.prepare_store --config=configs/griffin_1b.py \
      --store=gs://BUCKET/stores/web -- --runner=DataflowRunner --project=P \
      --region=R --temp_location=gs://BUCKET/tmp --setup_file=./pyproject.toml

but no source reaches Dataflow's workers yet: documents.find_files globs and
opens local files only (data.files='gs://...' is refused with that reason),
stdlib paths are the driver's interpreter's, and TFDS datasets are read from a
local data_dir. It needs gs:// reads in pipeline/documents.py first.

Expected (measured 2026-12, 2 CPU cores, configs/smoke.py: the stdlib, 8192
pieces): train 649 documents, 2,895,657 tokens; validation 82 documents,
480,023 tokens; one shard each; 9 s with --workers=1 (2.4 s of it training the
tokenizer), 12 s with --workers=2 (worker processes cost more than they save on
two cores); the same bytes either way."""

import json
import time

from absl import flags

from common import cli
from common import config_flag
from pipeline import store_build
from pipeline.config import DataConfig

_CONFIG = config_flag.define_config_flag()
_STORE = flags.DEFINE_string("store", None, "The store directory, local or gs://.")
_WORKERS = flags.DEFINE_integer("workers", 1, "DirectRunner worker processes; 1 = in "
                                "this process.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 0, "Shards per split; 0 = one per "
                                   "~256 MB of input text.")
flags.mark_flags_as_required(["store"])


def main(beam_args: list[str]):
  cd, start = config_flag.flag_config(_CONFIG), time.monotonic()
  manifest = store_build.build_store(
      DataConfig(**cd.data.to_dict()), _STORE.value, cd.model.vocab_size,
      workers=_WORKERS.value, num_shards=_NUM_SHARDS.value, beam_args=beam_args)
  splits = {name: {"documents": s["documents"], "tokens": s["tokens"],
                   "shards": len(s["shards"])} for name, s in manifest["splits"].items()}
  print(json.dumps({"store": _STORE.value, "splits": splits,
                    "seconds": round(time.monotonic() - start, 1)}))


if __name__ == "__main__":
  cli.run(main, beam_args=True)
