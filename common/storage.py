"""gs:// paths checked in the first seconds of a command: that this machine
can reach Cloud Storage and has credentials. Without them the storage
clients retry for a minute or more and log every retry; this says what is
wrong in one line instead.

Under STORAGE_EMULATOR_HOST (the tests' local emulator) the emulator is the
endpoint and no credentials are needed.
"""

import functools
import os
import socket
from urllib.parse import urlparse

AUTHENTICATE = ("authenticate with `gcloud auth application-default login`, or set "
                "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (a Cloud TPU "
                "VM or GKE pod uses its service account by itself)")


def check_gcs_reachable(path: str, flag: str, timeout_s: float = 10.0):
  """Nothing for a local `path`. For gs://: one TCP connection to the
  storage endpoint and the default credentials, else a ValueError naming
  `flag`=`path` and what to do."""
  if not path.startswith("gs://"):
    return
  emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
  endpoint = urlparse(emulator if "://" in emulator else f"http://{emulator}") if emulator else None
  host, port = (endpoint.hostname, endpoint.port or 80) if endpoint else (
      "storage.googleapis.com", 443)
  try:
    _connect(host, port, timeout_s)
  except OSError as e:
    raise ValueError(f"{flag}={path}: Cloud Storage ({host}:{port}) cannot be reached from "
                     f"this machine ({e}); check its network, or use a local path") from e
  if emulator:
    return
  from google.auth import exceptions  # gcsfs's dependency; imported only for gs:// paths
  try:
    _default_credentials()
  except exceptions.DefaultCredentialsError as e:
    raise ValueError(f"{flag}={path}: this machine has no Google Cloud credentials; "
                     f"{AUTHENTICATE}") from e


# A success is remembered for the process (a training run checks its workdir
# from main, then from the loop); a failure raises, so it is never cached.
@functools.lru_cache(maxsize=None)
def _connect(host: str, port: int, timeout_s: float):
  socket.create_connection((host, port), timeout=timeout_s).close()


@functools.lru_cache(maxsize=1)
def _default_credentials():
  import google.auth
  google.auth.default()
