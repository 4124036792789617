"""The data pipeline's frozen config and its validation (no JAX import)."""

import dataclasses

DEFAULT_DATASET = "stdlib"  # The interpreter's standard library source; no download.


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to read, how to tokenize it and how to batch it."""

  dataset: str = DEFAULT_DATASET  # a registered TFDS name, or "stdlib"
  data_dir: str = ""  # "" = the default cache dir; may be a gs:// path
  text_feature: str = "text"  # the dataset feature holding the text
  tokenizer: str = ""  # SentencePiece model path; "" = the one trained beside the data
  seq_len: int = 512  # tokens per packed example
  global_batch_size: int = 8  # examples per optimizer step, over all hosts
  shuffle_seed: int = 0
  worker_count: int = 0  # Grain worker processes; 0 = read in the main process

  def __post_init__(self):
    for name in ("dataset", "text_feature"):
      value = getattr(self, name)
      if not isinstance(value, str) or not value:
        raise ValueError(f"data.{name}={value!r} must be a non-empty string.")
    for name in ("data_dir", "tokenizer"):
      value = getattr(self, name)
      if not isinstance(value, str):
        raise ValueError(f"data.{name}={value!r} must be a string (\"\" for the "
                         "default).")
    _int_at_least(self, 1, "seq_len", "global_batch_size")
    _int_at_least(self, 0, "shuffle_seed", "worker_count")


def _int_at_least(config, low, *names):
  for name in names:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise ValueError(f"data.{name}={value!r} must be an integer >= {low}.")
