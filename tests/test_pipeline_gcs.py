"""A gs:// data_dir against the local GCS emulator: build, upload, a second
host's download, and a tokenizer read from gs://. No network."""

import os
import shutil
import socket
import subprocess
import sys
import time

# Read when gcsfs is imported: its default (true) swaps in a file system that
# probes for Google credentials on every bucket, a minute of timeouts here.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402
import gcsfs  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pipeline import grain_pipeline
from pipeline import prepare as prepare_lib
from pipeline.config import DataConfig
from pipeline.tokenizer import load_tokenizer

EMULATOR = shutil.which("gcp-storage-emulator",
                        path=os.path.dirname(sys.executable) + os.pathsep
                        + os.environ.get("PATH", ""))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def bucket():
  """`gs://bkt` on an in-memory emulator on a loopback port."""
  if EMULATOR is None:
    raise RuntimeError("gcp-storage-emulator is not installed: pip install -e '.[test]'")
  port = _free_port()
  process = subprocess.Popen(
      [EMULATOR, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  with pytest.MonkeyPatch.context() as patch:
    url = f"http://127.0.0.1:{port}"
    patch.setenv("STORAGE_EMULATOR_HOST", url)  # else gcsfs tries real GCS
    patch.setenv("TENSORSTORE_GCS_HTTP_URL", url)
    patch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    deadline = time.monotonic() + 20
    while True:
      try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        break
      except OSError:
        if time.monotonic() > deadline:
          process.kill()
          raise
        time.sleep(0.1)
    # In case gcsfs was imported before this module set the variable above.
    previous = fsspec.get_filesystem_class("gs")
    fsspec.register_implementation("gs", gcsfs.core.GCSFileSystem, clobber=True)
    gcsfs.core.GCSFileSystem.clear_instance_cache()  # none may point at another port
    fs = gcsfs.core.GCSFileSystem(token="anon")
    fs.mkdir("bkt")
    yield fs
    gcsfs.core.GCSFileSystem.clear_instance_cache()
    fsspec.register_implementation("gs", previous, clobber=True)
  process.terminate()
  process.wait(timeout=10)


def test_gcs_data_dir_builds_once_and_other_hosts_read_it(bucket, tmp_path, monkeypatch):
  config = DataConfig(data_dir="gs://bkt/tfds", max_files=12, validation_fraction=0.3,
                      seq_len=32, global_batch_size=4)
  monkeypatch.setenv("GRIFFIN_DATA_MIRROR", str(tmp_path / "host0"))
  built = prepare_lib.prepare(config, 512)
  assert built.path.startswith("gs://bkt/tfds/stdlib/")
  bucket.invalidate_cache()
  names = {os.path.basename(p) for p in bucket.find("bkt/tfds")}
  assert {"dataset_info.json", "spm_bpe512.model",
          "stdlib-train.array_record-00000-of-00001"} <= names
  first = next(grain_pipeline.train_iterator(config, built, 0, 1))

  # Another host: an empty mirror, and it must not build anything itself.
  monkeypatch.setenv("GRIFFIN_DATA_MIRROR", str(tmp_path / "host1"))
  read = prepare_lib.prepare(config, 512, build_if_missing=False)
  assert read.model_proto == built.model_proto
  assert (tmp_path / "host1" / "bkt").is_dir()
  again = next(grain_pipeline.train_iterator(config, read, 0, 1))
  for name in first:
    np.testing.assert_array_equal(first[name], again[name])


def test_a_tokenizer_model_on_gcs_loads(bucket, tmp_path_factory):
  from tests.test_pipeline_fixtures import small_stdlib
  _, tokenizer = small_stdlib(tmp_path_factory)
  bucket.pipe("bkt/models/mine.model", tokenizer.model_proto)
  assert load_tokenizer("gs://bkt/models/mine.model").vocab_size == tokenizer.vocab_size
  with pytest.raises(ValueError, match="gs://bkt/models/none.model"):
    load_tokenizer("gs://bkt/models/none.model")
