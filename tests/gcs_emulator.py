"""A local GCS emulator with fault injection, for the tests (tests/conftest.py's
fixtures), the drills (drills/storage.py) and the pipeline benchmark
(benchmarks/pipeline_read.py): the same gs:// code path as production, no
network."""

import os
import signal
import socket
import subprocess
import sys
import time

# The emulator's process. Changes to the stock server:
# - a listen backlog of 1024: its default of 5 drops the bursts of connections
#   tensorstore opens for parallel writes, and every dropped connection costs
#   a 1 s retransmit (checkpoint saves were ~10x slower);
# - its index of objects is written to disk when it stops, not after every
#   write (a JSON dump of every object per write: quadratic in the objects);
#   bucket creation still writes it at once (rare, and a bucket lost by a stop
#   that could not save the index would fail every later test on the bucket).
# - an upload without a body stores an empty object (the stock one fails);
# - listings honour startOffset/endOffset (the stock one ignores them, so a
#   tensorstore listing of one directory returned the whole bucket);
# And fault injection: while the file GCS_FAULT_FILE holds "<HTTP status>
# [<text>]", every write (POST, PUT, PATCH, DELETE) whose URL, unquoted,
# contains <text> (any write without one) is answered with that status.
_EMULATOR = r"""
import http, json, os, signal, sys, threading, time
from http import server as http_server
from urllib.parse import unquote
from gcp_storage_emulator import server, storage
from gcp_storage_emulator.handlers import objects

http_server.HTTPServer.request_queue_size = 1024
save_index = storage.Storage._write_config_to_file
storage.Storage._write_config_to_file = lambda self: None
create_bucket = storage.Storage.create_bucket


def create_bucket_and_save(self, name, bucket):
  created = create_bucket(self, name, bucket)
  save_index(self)
  return created


storage.Storage.create_bucket = create_bucket_and_save
data_of = server.Request.data.fget
# An empty object (an empty store shard) arrives without a body: None, which
# the upload handler cannot measure; real GCS stores zero bytes.
server.Request.data = property(lambda self: data_of(self) or b"")
ls = objects.ls


def ls_in_range(request, response, storage, *args, **kwargs):
  # tensorstore lists a directory as the key range [startOffset, endOffset).
  start = (request.query.get("startOffset") or [""])[0]
  end = (request.query.get("endOffset") or [None])[0]
  send = response.json

  def in_range(listing):
    listing["items"] = [item for item in listing.get("items") or []
                        if item["name"] >= start and (end is None or item["name"] < end)]
    send(listing)

  response.json = in_range
  return ls(request, response, storage, *args, **kwargs)


for _, methods in server.HANDLERS:
  for method, handle in list(methods.items()):
    if handle is ls:
      methods[method] = ls_in_range
fault_file = os.environ["GCS_FAULT_FILE"]


serving = threading.Lock()  # held while a request is answered


def with_faults(method, handle):
  def handler(self):
    with serving:
      answer_or_fail(self, method, handle)
  return handler


def answer_or_fail(self, method, handle):
  status = match = ""
  if method != "GET" and os.path.exists(fault_file):
    with open(fault_file) as f:
      status, _, match = f.read().strip().partition(" ")
  if not status or match not in unquote(self.path):
    return handle(self)
  self.rfile.read(int(self.headers.get("Content-Length") or 0))  # else a reset, not a status
  code = int(status)
  body = json.dumps({"error": {"code": code, "message": "injected fault: "
                               + http.HTTPStatus(code).phrase}}).encode()
  self.send_response(code)
  self.send_header("Content-Type", "application/json")
  self.send_header("Content-Length", str(len(body)))
  self.end_headers()
  self.wfile.write(body)


for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
  name = "do_" + method
  setattr(server.RequestHandler, name, with_faults(method, getattr(server.RequestHandler, name)))
port, data_dir = int(sys.argv[1]), sys.argv[2]
emulator = server.create_server("127.0.0.1", port, in_memory=False, data_dir=data_dir)


def stop(signum, frame):
  # Not the stock server's stop: it waits for the request being read, and a
  # client's idle connection never sends one (30 s, then a kill that lost
  # the index).
  with serving:
    save_index(emulator._storage)
    os._exit(0)


signal.signal(signal.SIGINT, stop)
emulator.start()
while True:
  time.sleep(3600)
"""


class GcsEmulator:
  """A local GCS emulator (gcp-storage-emulator) on a loopback port, with
  objects kept on disk in `data_dir` across `stop()` and `start()` (a storage
  outage), and `fail(status)` to answer every write with an HTTP error (403:
  permission denied, 507: insufficient storage) until `fail(None)`.

  `env` holds the variables that point gcsfs, etils and tensorstore at it
  (for this process: `os.environ.update(emulator.env)`, or a subprocess's).
  """

  def __init__(self, data_dir: str):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      self.port = s.getsockname()[1]
    self.data_dir = data_dir
    self.fault_file = os.path.join(data_dir, "fault")
    self.url = f"http://127.0.0.1:{self.port}"
    # A fixed token: without one tensorstore looks for credentials, the GCE
    # metadata server included (a network lookup the tests must not make).
    self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
    self.process = None

  def start(self) -> "GcsEmulator":
    self.process = subprocess.Popen(
        [sys.executable, "-c", _EMULATOR, str(self.port), self.data_dir],
        env=dict(os.environ, GCS_FAULT_FILE=self.fault_file),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
      try:
        socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
        return self
      except OSError:
        if time.monotonic() > deadline or self.process.poll() is not None:
          raise RuntimeError(f"the GCS emulator did not start on port {self.port}")
        time.sleep(0.05)

  def stop(self):
    """Stops serving (connections are refused); the objects stay on disk."""
    if self.process is not None and self.process.poll() is None:
      self.process.send_signal(signal.SIGINT)
      try:
        self.process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    self.process = None

  def fail(self, status: int | None, match: str = ""):
    """Answers every write whose URL contains `match` (every write, without
    one) with HTTP `status` from now on; None heals."""
    if status is None:
      if os.path.exists(self.fault_file):
        os.remove(self.fault_file)
    else:
      with open(self.fault_file, "w") as f:
        f.write(f"{status} {match}".strip())

  def make_bucket(self, name: str) -> str:
    import gcsfs
    gcsfs.GCSFileSystem(token="anon").mkdir(name)
    return f"gs://{name}"
