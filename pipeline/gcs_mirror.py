"""gs:// dataset directories, mirrored to local disk for ArrayRecord.

TFDS reads its metadata through etils paths (gcsfs underneath), but the
ArrayRecord C++ reader and writer open only local files. So a dataset under
gs:// is built locally and uploaded here, and read from a local copy that is
downloaded once (files whose size already matches are not fetched again).
The local root is $GRIFFIN_DATA_MIRROR, or ~/.cache/griffin/gcs.
"""

import os
import shutil

from absl import logging
from etils import epath

_INFO = "dataset_info.json"  # TFDS's mark of a prepared directory: written last


def is_remote(path: str) -> bool:
  return path.startswith("gs://")


def local_dir(remote_dir: str) -> str:
  """Where `gs://bucket/path` is mirrored on this machine."""
  root = os.environ.get("GRIFFIN_DATA_MIRROR") or os.path.expanduser("~/.cache/griffin/gcs")
  return os.path.join(root, remote_dir.removeprefix("gs://"))


def is_published(directory: str) -> bool:
  """Whether a prepared dataset is complete in `directory` (local or gs://)."""
  return (epath.Path(directory) / _INFO).exists()


def _copy(source: epath.Path, target: epath.Path):
  partial = target.parent / (target.name + ".partial")
  with source.open("rb") as reader, partial.open("wb") as writer:
    shutil.copyfileobj(reader, writer, length=1 << 22)
  partial.rename(target)


def _ordered(files: list[epath.Path]) -> list[epath.Path]:
  """Data first, dataset_info.json last, so a reader never sees half a dataset."""
  return sorted(files, key=lambda p: (p.name == _INFO, p.name))


def download(remote_dir: str, local: str):
  """Copies the files of `remote_dir` that `local` lacks (or has another size of)."""
  target = epath.Path(local)
  target.mkdir(parents=True, exist_ok=True)
  fetched = 0
  for source in _ordered([p for p in epath.Path(remote_dir).iterdir() if p.is_file()]):
    mirror = target / source.name
    if mirror.exists() and mirror.stat().length == source.stat().length:
      continue
    _copy(source, mirror)
    fetched += 1
  logging.info("mirrored %s -> %s (%d files fetched)", remote_dir, local, fetched)


def upload(local: str, remote_dir: str):
  """Copies a prepared local dataset directory to `remote_dir`."""
  target = epath.Path(remote_dir)
  target.mkdir(parents=True, exist_ok=True)
  for source in _ordered([p for p in epath.Path(local).iterdir() if p.is_file()]):
    # GCS objects appear whole on close, so no temporary name is needed there.
    with source.open("rb") as reader, (target / source.name).open("wb") as writer:
      shutil.copyfileobj(reader, writer, length=1 << 22)
  logging.info("uploaded %s -> %s", local, remote_dir)
