"""Documents from local files: discovery, decoding, bad input, and the split.

Plain Python (no TFDS, no JAX), so each rule is testable on its own. A plain
text file is one document; a JSONL file holds one document per line, in a
string field. Bad input is never fatal deep inside a build and never silent:
each kind is counted in `ReadStats` and its first occurrences are logged with
the file (and line).
"""

import dataclasses
import glob
import hashlib
import json
import os
import pathlib
import sysconfig
from collections.abc import Iterator

from absl import logging
from etils import epath

_WILDCARDS = "*?["
_LOGGED_PER_KIND = 5  # the first few of each kind name their file; the rest are counted
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
STDLIB_EXCLUDED_DIRS = ("test", "tests", "idle_test", "site-packages", "dist-packages")


@dataclasses.dataclass
class ReadStats:
  """What one split's build read, skipped or repaired (stored in the metadata)."""

  files: int = 0
  documents: int = 0
  empty_skipped: int = 0  # empty or whitespace-only documents (and empty files)
  invalid_utf8_replaced: int = 0  # documents whose undecodable bytes became U+FFFD
  bad_lines_skipped: int = 0  # JSONL lines that are not an object with a string field

  def note(self, kind: str, where: str, why: str):
    """Counts one bad input of `kind`; logs the first few with their place
    (an empty document, common and harmless, below WARNING)."""
    setattr(self, kind, getattr(self, kind) + 1)
    if getattr(self, kind) <= _LOGGED_PER_KIND:
      log = logging.info if kind == "empty_skipped" else logging.warning
      log("%s: %s (%s #%d; later ones are only counted)", where, why,
                      kind, getattr(self, kind))


def glob_root(pattern: str) -> str:
  """The directory part of `pattern` before its first wildcard (local or gs://).

  Document keys are paths relative to it, so moving the corpus keeps the split.
  """
  scheme, rest = ("gs://", pattern[len("gs://"):]) if is_remote(pattern) else (
      "", os.path.expanduser(pattern))
  fixed = []
  for part in rest.split("/")[:-1]:
    if any(c in part for c in _WILDCARDS):
      break
    fixed.append(part)
  root = "/".join(fixed)
  return scheme + root if root or scheme else ("/" if rest.startswith("/") else ".")


def is_remote(path: str) -> bool:
  return path.startswith("gs://")


def find_files(pattern: str, max_files: int = 0) -> list[str]:
  """Sorted files matching `pattern`, local or gs:// (`**` recurses); the first
  `max_files` of them when it is > 0. No match is an error naming the glob."""
  if is_remote(pattern):
    import gcsfs  # etils' gs:// glob refuses `**`
    fs = gcsfs.GCSFileSystem()
    paths = sorted("gs://" + p for p in fs.glob(pattern) if fs.isfile(p))
  else:
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                   if os.path.isfile(p))
  if not paths:
    raise ValueError(f"data.files={pattern!r} matches no files; give a glob of "
                     "existing text or JSONL files, e.g. '/data/corpus/*.jsonl'.")
  return paths[:max_files] if max_files else paths


def file_size(path: str) -> int:
  return epath.Path(path).stat().length if is_remote(path) else os.path.getsize(path)


def stdlib_files(max_files: int = 0) -> tuple[list[str], str]:
  """The running interpreter's standard-library .py files outside test folders
  (and outside site-packages, which lives under the same root), and the root."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  paths = sorted(str(p) for p in root.rglob("*.py")
                 if not any(part in STDLIB_EXCLUDED_DIRS
                            for part in p.relative_to(root).parts))
  return (paths[:max_files] if max_files else paths), str(root)


def split_of(key: str, validation_fraction: float) -> str:
  """"validation" for a fixed pseudo-random `validation_fraction` of keys.

  A hash of the key, not the file order, so adding files never moves others.
  """
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  unit = int.from_bytes(digest[:8], "big") / 2**64
  return "validation" if unit < validation_fraction else "train"


def is_jsonl(path: str, file_format: str) -> bool:
  """Whether `path` is read as JSONL ("auto" decides by its suffix)."""
  if file_format == "auto":
    return path.lower().endswith(JSONL_SUFFIXES)
  return file_format == "jsonl"


def decode(data: bytes, where: str, stats: ReadStats) -> str:
  """UTF-8 text; undecodable bytes become U+FFFD and are counted."""
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as error:
    stats.note("invalid_utf8_replaced", where,
               f"invalid UTF-8 at byte {error.start}; replaced with U+FFFD")
    return data.decode("utf-8", errors="replace")


def read_documents(paths: list[str], root: str, split: str, file_format: str,
                   jsonl_field: str, validation_fraction: float,
                   stats: ReadStats) -> Iterator[tuple[str, str]]:
  """(key, text) of the documents of `split`; bad ones counted in `stats`.

  Keys are `relative/path` (a text file) or `relative/path:line` (JSONL).
  """
  for path in paths:
    key = path[len(root) + 1:] if is_remote(path) else os.path.relpath(path, root)
    jsonl = is_jsonl(path, file_format)
    if not jsonl and split_of(key, validation_fraction) != split:
      continue  # decided by the path alone: do not even read it
    try:
      data = epath.Path(path).read_bytes()
    except OSError as error:
      raise ValueError(f"cannot read {path!r} (matched by the glob): {error}") from error
    stats.files += 1
    if not jsonl:
      text = decode(data, path, stats)
      if text.strip():
        stats.documents += 1
        yield key, text
      else:
        stats.note("empty_skipped", path, "empty document skipped")
      continue
    if not data.strip() and split == "train":  # count an empty file once
      stats.note("empty_skipped", path, "empty JSONL file skipped")
    for number, line in enumerate(data.split(b"\n"), start=1):
      line_key = f"{key}:{number}"
      if not line.strip() or split_of(line_key, validation_fraction) != split:
        continue  # blank lines separate records; they are not documents
      yield from _jsonl_document(line, line_key, f"{path}:{number}", jsonl_field, stats)


def _jsonl_document(line: bytes, key: str, where: str, field: str, stats: ReadStats):
  try:
    record = json.loads(decode(line, where, stats))
  except json.JSONDecodeError as error:
    stats.note("bad_lines_skipped", where, f"not JSON ({error.msg})")
    return
  text = record.get(field) if isinstance(record, dict) else None
  if not isinstance(text, str):
    stats.note("bad_lines_skipped", where,
               f"not a JSON object with a string field {field!r} (data.jsonl_field)")
  elif not text.strip():
    stats.note("empty_skipped", where, "empty document skipped")
  else:
    stats.documents += 1
    yield key, text
