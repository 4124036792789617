"""TFDS builders that turn local text into ArrayRecord train/validation splits.

`TextFiles` ("text_files") reads the files of a glob; `Stdlib` ("stdlib") reads
the running interpreter's standard library, so the default corpus needs no
download. Both write ArrayRecord through `download_and_prepare` without
TensorFlow, and store what they skipped or repaired in `info.metadata`
(`{"train": ReadStats, "validation": ReadStats}` as dicts).

Each builder config is named after everything that changes its output, so a
different glob, fraction or file limit builds beside, not over, an old one.
"""

import dataclasses
import hashlib
import platform

import tensorflow_datasets as tfds
from absl import logging

from pipeline import documents
from pipeline.config import DataConfig

FEATURES = ("text", "key")  # the document, and where it came from


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
  """A corpus of local files (one per `DataConfig` that reads them)."""

  files: str = ""
  file_format: str = "auto"
  jsonl_field: str = "text"
  validation_fraction: float = 0.1
  max_files: int = 0


class TextFiles(tfds.core.GeneratorBasedBuilder):
  """Documents from local plain-text or JSONL files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  # TFDS would look for a download-checksums file beside this module through
  # `importlib_resources`, which is not installed; there is nothing to download.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Text documents and their keys (relative path[:line]).",
        features=tfds.features.FeaturesDict(
            {name: tfds.features.Text() for name in FEATURES}),
        metadata=tfds.core.MetadataDict())

  def _paths(self) -> tuple[list[str], str]:
    """The files to read and the root their keys are relative to."""
    config = self.builder_config
    paths = documents.find_files(config.files, config.max_files)
    return paths, documents.glob_root(config.files)

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only: nothing to download
    paths, root = self._paths()
    logging.info("%s: reading %d files under %s into %s", self.name, len(paths),
                 root, self.data_dir)
    return {split: self._generate_examples(paths, root, split)
            for split in ("train", "validation")}

  def _read_format(self) -> tuple[str, str]:
    """(file_format, jsonl_field) of the files."""
    return self.builder_config.file_format, self.builder_config.jsonl_field

  def _generate_examples(self, paths, root, split):
    fraction = self.builder_config.validation_fraction
    stats = documents.ReadStats()
    for key, text in documents.read_documents(paths, root, split, *self._read_format(),
                                              fraction, stats):
      yield key, {"text": text, "key": key}
    logging.info("%s %s: %s", self.name, split, stats)
    if not stats.documents:
      raise ValueError(
          f"the {split} split of {self.name} (files under {root}) has no "
          f"documents ({stats}); add files or change data.validation_fraction="
          f"{fraction} so that both splits get some.")
    # TFDS writes metadata.json after generation, so the counts are kept.
    self.info.metadata[split] = dataclasses.asdict(stats)


@dataclasses.dataclass(eq=False)
class StdlibConfig(tfds.core.BuilderConfig):
  """A split of the standard library of one Python version."""

  validation_fraction: float = 0.1
  max_files: int = 0


class Stdlib(TextFiles):
  """The embedded default corpus: this Python's standard library .py files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  def _paths(self) -> tuple[list[str], str]:
    return documents.stdlib_files(self.builder_config.max_files)

  def _read_format(self) -> tuple[str, str]:
    return "text", "text"


def builder_config(config: DataConfig) -> tfds.core.BuilderConfig:
  """The builder config of `config.dataset` ("stdlib" or "text_files")."""
  fraction, limit = config.validation_fraction, config.max_files
  if config.dataset == "stdlib":
    python = ".".join(platform.python_version_tuple()[:2])
    return StdlibConfig(
        name=f"py{python}_val{fraction:g}_files{limit or 'all'}",
        description="Standard library of this Python, test folders excluded.",
        validation_fraction=fraction, max_files=limit)
  fields = (config.files, config.file_format, config.jsonl_field, fraction, limit)
  digest = hashlib.sha256(repr(fields).encode()).hexdigest()[:12]
  return TextFilesConfig(
      name=f"files_{digest}", description=f"Documents of {config.files!r}.",
      files=config.files, file_format=config.file_format,
      jsonl_field=config.jsonl_field, validation_fraction=fraction, max_files=limit)
