"""The one place that turns a DataConfig into row sources and streams.

  data.stores set          those token stores, mixed by data.mixture
  data.dataset generated   "selective_copying", "induction_heads" (from the
                           seed) or "stdlib_bytes" (bytes, tests and tiny runs)
  otherwise                the store of data.dataset ("stdlib", "text_files",
                           a registered TFDS name), built in data_dir the
                           first time by `ensure_stores`
"""

import hashlib
import os


from pipeline import row_sources
from pipeline import row_stream
from pipeline import stdlib_bytes
from pipeline import synthetic
from pipeline import token_store
from pipeline import tokenizer as tokenizer_lib
from pipeline.config import DataConfig

DEFAULT_DATA_DIR = "~/.cache/griffin/tfds"
BYTES = "stdlib_bytes"
GENERATED = (*synthetic.DATASETS, BYTES)
EVAL_SEED = 0  # every run scores the same validation sample, whatever its seed


def store_paths(config: DataConfig, vocab_size: int) -> dict[str, str]:
  """{name: store directory}: data.stores, or data.dataset's default store."""
  if config.stores:
    return config.store_paths()
  if config.dataset in GENERATED:
    return {}
  source = (config.dataset, config.files, config.file_format, config.jsonl_field,
            config.validation_fraction, config.max_files, config.text_feature,
            config.train_split, config.eval_split, config.tokenizer, vocab_size)
  digest = hashlib.sha256(repr(source).encode()).hexdigest()[:12]
  data_dir = config.data_dir or os.path.expanduser(DEFAULT_DATA_DIR)
  return {config.dataset: f"{data_dir.rstrip('/')}/stores/{config.dataset}_v{vocab_size}_{digest}"}


def ensure_stores(config: DataConfig, vocab_size: int, build_if_missing: bool):
  """Builds data.dataset's default store if it is missing (one process only:
  the others pass False and find it). Stores named in data.stores must exist."""
  if config.stores or config.dataset in GENERATED:
    return
  (path,) = store_paths(config, vocab_size).values()
  try:
    token_store.read_manifest(path)
  except ValueError:
    if not build_if_missing:
      raise
    from pipeline import store_build  # Beam is imported only to build
    print(f"building the token store of {config.dataset} in {path} (once)", flush=True)
    store_build.build_store(config, path, vocab_size)


def make_tokenizer(config: DataConfig, vocab_size: int):
  """Text <-> ids for `config`: the stores' SentencePiece model (all stores
  must share it), the ids of a synthetic task, or bytes."""
  if config.dataset in synthetic.DATASETS and not config.stores:
    synthetic.check_vocab(config.dataset, vocab_size)
    return synthetic.IdTokenizer(config.dataset)
  if config.dataset == BYTES and not config.stores:
    tokenizer_lib.check_vocab(stdlib_bytes.ByteTokenizer(), vocab_size)
    return stdlib_bytes.ByteTokenizer()
  if config.tokenizer and not config.stores:  # sampling, an imported model: no store
    path = config.tokenizer
  else:
    path = check_stores(config, vocab_size)
  tokenizer = tokenizer_lib.load_tokenizer(path)
  tokenizer_lib.check_vocab(tokenizer, vocab_size)
  return tokenizer


def check_stores(config: DataConfig, vocab_size: int) -> str:
  """Every store was made by one tokenizer (data.tokenizer, if given) with the
  model's vocabulary; returns that tokenizer's path."""
  fingerprint, path = "", config.tokenizer
  if path:
    fingerprint = token_store.tokenizer_fingerprint(
        tokenizer_lib.load_tokenizer(path).model_proto)
  for directory in store_paths(config, vocab_size).values():
    manifest = token_store.read_manifest(directory)
    token_store.check_tokenizer(directory, manifest, fingerprint, vocab_size)
    fingerprint = manifest["tokenizer"]["sha256"]
    path = path or token_store.tokenizer_path(directory, manifest)
  return path


def open_sources(config: DataConfig, vocab_size: int, split: str, seed: int | None):
  """{name: row source} of `split` (a train or eval split name)."""
  if not config.stores and config.dataset in synthetic.DATASETS:
    synthetic.check_vocab(config.dataset, vocab_size)
    task_split = "train" if split == config.train_split else "validation"
    return {config.dataset: row_sources.SyntheticRows(config.dataset, task_split,
                                                      config.seq_len, seed or 0)}
  if not config.stores and config.dataset == BYTES:
    make_tokenizer(config, vocab_size)
    byte_split = "train" if split == config.train_split else "validation"
    return {BYTES: row_sources.ByteRows(byte_split, config.seq_len, seed)}
  check_stores(config, vocab_size)
  return {name: row_sources.StoreRows(path, split, config.seq_len, seed or 0)
          for name, path in store_paths(config, vocab_size).items()}


def process_slot(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(index, count) of this host; JAX's when not given (tests pass them)."""
  if process_index is None or process_count is None:
    import jax  # Deferred: the pipeline and its workers run without JAX.
    process_index, process_count = jax.process_index(), jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, "
                     f"process_count={process_count}).")
  return process_index, process_count


def train_stream(config: DataConfig, vocab_size: int, process_index: int | None = None,
                 process_count: int | None = None) -> row_stream.DataStream:
  """This host's endless training batches (resumable anywhere: row_stream)."""
  process_index, process_count = process_slot(process_index, process_count)
  config.check_hosts(process_count)
  sources = open_sources(config, vocab_size, config.train_split, config.shuffle_seed)
  return row_stream.DataStream(
      sources, config.weights(list(sources)), global_batch_size=config.global_batch_size,
      seq_len=config.seq_len, seed=config.shuffle_seed, process_index=process_index,
      process_count=process_count, worker_count=config.worker_count)


def eval_streams(config: DataConfig, vocab_size: int, num_batches: int,
                 process_index: int | None = None,
                 process_count: int | None = None) -> dict[str, row_stream.DataStream]:
  """{source: this host's validation batches}: the first rows of a fixed
  shuffle of the whole split (the same sample for every run and host count).
  A store whose split holds fewer than `num_batches` global batches is an
  error rather than a sample that repeats documents."""
  process_index, process_count = process_slot(process_index, process_count)
  config.check_hosts(process_count)
  seed = None if config.dataset == BYTES and not config.stores else EVAL_SEED
  sources = open_sources(config, vocab_size, config.eval_split, seed)
  for name, source in sources.items():
    rows = getattr(source, "rows_per_epoch", None)
    if rows is not None and rows() < num_batches * config.global_batch_size:
      raise ValueError(
          f"the {config.eval_split!r} split of source {name!r} holds {rows()} rows of "
          f"data.seq_len={config.seq_len}, fewer than the {num_batches} batches x "
          f"{config.global_batch_size} rows asked for; ask for fewer eval batches, or a "
          "shorter data.seq_len or data.global_batch_size.")
  return {name: row_stream.DataStream(
      {name: source}, {name: 1.0}, global_batch_size=config.global_batch_size,
      seq_len=config.seq_len, seed=EVAL_SEED, process_index=process_index,
      process_count=process_count) for name, source in sources.items()}
