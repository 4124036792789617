"""The data pipeline's frozen config and its validation (no JAX import)."""

import dataclasses
import math

from common.checks import check_ints
from pipeline import synthetic  # numpy only: the tasks' names and sizes

DEFAULT_DATASET = "stdlib"  # The interpreter's standard library source; no download.
TEXT_FILES = "text_files"  # The user's own files, matched by `DataConfig.files`.
FILE_FORMATS = ("auto", "text", "jsonl")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to read, how to tokenize it and how to batch it."""

  # "stdlib", "text_files", "stdlib_bytes", "selective_copying",
  # "induction_heads" (pipeline/synthetic.py), or a registered TFDS name
  dataset: str = DEFAULT_DATASET
  data_dir: str = ""  # "" = ~/.cache/griffin/tfds; may be a gs:// path
  text_feature: str = "text"  # the dataset feature holding the text
  tokenizer: str = ""  # SentencePiece model path; "" = the one trained beside the data
  seq_len: int = 512  # tokens per packed example
  global_batch_size: int = 8  # examples per optimizer step, over all hosts
  shuffle_seed: int = 0  # synthetic tasks: the seed of the training rows
  worker_count: int = 0  # Grain worker processes; 0 = read in the main process
  files: str = ""  # dataset="text_files": a glob of local files, e.g. "/d/*.jsonl"
  file_format: str = "auto"  # "text" (a document per file), "jsonl" (per line), "auto"
  jsonl_field: str = "text"  # the JSON key holding a JSONL line's text
  validation_fraction: float = 0.1  # of the documents, chosen by a hash of their key
  max_files: int = 0  # stdlib/text_files: use only the first N files; 0 = all
  train_split: str = "train"
  eval_split: str = "validation"
  # Token stores to train on (docs/data.md): "name=path,name=path" or one
  # path (named after its last folder), local or gs://. "" = the store of
  # data.dataset, built in data_dir on first use.
  stores: str = ""
  mixture: str = ""  # "name:weight,...", positive weights over data.stores; "" = equal

  def check_hosts(self, hosts: int, where: str = ""):
    """Every host (process) reads an equal share of each global batch."""
    if self.global_batch_size % hosts:
      raise ValueError(f"data.global_batch_size={self.global_batch_size} is not divisible "
                       f"by the {hosts} processes (hosts){where}: every host reads an "
                       f"equal share; use a multiple of {hosts}.")

  def store_paths(self) -> dict[str, str]:
    """data.stores as {name: path}, in the order given."""
    out = {}
    for entry in filter(None, (e.strip() for e in self.stores.split(","))):
      name, _, path = entry.partition("=") if "=" in entry.split("://")[0] else ("", "", entry)
      name = name or path.rstrip("/").rsplit("/", 1)[-1]
      if not name or not path or name in out:
        raise ValueError(f"data.stores={self.stores!r}: entry {entry!r} needs a unique "
                         "name and a path, as 'name=path' (e.g. 'web=gs://b/web,"
                         "code=/data/code').")
      out[name] = path
    return out

  def weights(self, names) -> dict[str, float]:
    """data.mixture as {name: weight} over `names` (equal weights if empty)."""
    if not self.mixture:
      return {name: 1.0 for name in names}
    out = {}
    for entry in filter(None, (e.strip() for e in self.mixture.split(","))):
      name, _, weight = entry.rpartition(":")
      try:
        value = float(weight)
      except ValueError:
        value = math.nan
      if name not in names:
        raise ValueError(f"data.mixture={self.mixture!r} names source {name!r}, which is "
                         f"not one of the sources {list(names)} (data.stores).")
      if not math.isfinite(value) or value <= 0:
        raise ValueError(f"data.mixture={self.mixture!r}: the weight of {name!r} is "
                         f"{weight!r}; weights must be positive numbers, as 'name:0.7'.")
      out[name] = value
    missing = [name for name in names if name not in out]
    if missing:
      raise ValueError(f"data.mixture={self.mixture!r} gives no weight to {missing}; "
                       f"name every source of {list(names)} with a positive weight.")
    return out

  def __post_init__(self):
    for name in ("dataset", "text_feature", "jsonl_field", "train_split",
                 "eval_split"):
      value = getattr(self, name)
      if not isinstance(value, str) or not value:
        raise ValueError(f"data.{name}={value!r} must be a non-empty string.")
    for name in ("data_dir", "tokenizer", "files"):
      value = getattr(self, name)
      if not isinstance(value, str):
        raise ValueError(f"data.{name}={value!r} must be a string (\"\" for the "
                         "default).")
    check_ints("data", self, 1, "seq_len", "global_batch_size")
    check_ints("data", self, 0, "shuffle_seed", "worker_count", "max_files")
    if self.seq_len < 2:
      raise ValueError(f"data.seq_len={self.seq_len} must be >= 2 (a row holds "
                       "at least one input and one target).")
    if self.file_format not in FILE_FORMATS:
      raise ValueError(f"data.file_format={self.file_format!r} is not one of "
                       f"{list(FILE_FORMATS)}.")
    fraction = self.validation_fraction
    if (not isinstance(fraction, (int, float)) or isinstance(fraction, bool)
        or not math.isfinite(fraction) or not 0 < fraction < 1):
      raise ValueError(f"data.validation_fraction={fraction!r} must be a number "
                       "in (0, 1).")
    if self.dataset == TEXT_FILES and not self.files:
      raise ValueError(f"data.dataset={TEXT_FILES!r} needs data.files, a glob of "
                       "the text or JSONL files to read (e.g. '/data/*.jsonl').")
    if self.dataset in synthetic.DATASETS:
      synthetic.check(self.dataset, self.seq_len)
    names = list(self.store_paths())
    self.weights(names or [self.dataset])
    if self.files and self.dataset != TEXT_FILES:
      raise ValueError(f"data.files={self.files!r} is only read when data.dataset="
                       f"{TEXT_FILES!r} (it is {self.dataset!r}); set one or clear "
                       "the other.")
