"""Test setup: 8 fake CPU devices before JAX starts, strict numerics modes."""

import os

# Must run before jax is imported anywhere: multi-device tests use these.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")


import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gcs_bucket():
  """A fresh bucket on a local GCS emulator (loopback); yields "gs://<bucket>".

  Sets the variables that point gcsfs, etils and tensorstore at the emulator;
  the same gs:// code path as production, no network.
  """
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  emulator = subprocess.Popen(
      [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
       f"--port={port}", "--in-memory"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f"http://127.0.0.1:{port}"
  saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                                           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")}
  os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
  try:
    for _ in range(100):
      try:
        socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
        break
      except OSError:
        time.sleep(0.1)
    import gcsfs
    gcsfs.GCSFileSystem(token="anon").mkdir("test-bucket")
    yield "gs://test-bucket"
  finally:
    emulator.terminate()
    emulator.wait()
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
