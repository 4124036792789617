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
(`pip install -e '.[dataflow]'`: Beam's GCP extra; the workers install this
package from setup.py), which reads a gs:// corpus on its workers:

  python -m pipeline.prepare_store --config=configs/griffin_1b.py \
      --config.data.dataset=text_files --config.data.files='gs://BUCKET/corpus/**/*.jsonl' \
      --store=gs://BUCKET/stores/web -- --runner=DataflowRunner --project=P \
      --region=R --temp_location=gs://BUCKET/tmp --setup_file=./setup.py

The stdlib and TFDS datasets are read from the driver's own paths (its
interpreter, a local data_dir): the DirectRunner only. Sizes and times of
the default store: docs/data.md."""

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
