"""Test setup: 8 fake CPU devices before JAX starts, strict numerics modes."""

import atexit
import os
import shutil
import tempfile

from tests.cpu_devices import xla_flags

# Must run before jax is imported anywhere: multi-device tests use these.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags(8)}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session: pytest's main process
# makes it, and the xdist workers and the commands the tests start inherit it
# through the environment. The many tests that train the same tiny config
# again (a resumed run, another process, another worker) load the compiled
# program instead of compiling it; it lives only as long as the session.
if "GRIFFIN_TEST_XLA_CACHE" not in os.environ:
  os.environ["GRIFFIN_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="griffin_test_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["GRIFFIN_TEST_XLA_CACHE"], ignore_errors=True)
_CACHE_DIR = os.environ["GRIFFIN_TEST_XLA_CACHE"]
os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE_DIR,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402

from tests.gcs_emulator import GcsEmulator  # noqa: E402


# The files of most worker-seconds, slowest first (`python -m pytest
# --durations=0`; docs/performance.md, "The test suite"). xdist hands whole
# files to the workers in collection order (`--dist loadfile
# --no-loadscope-reorder`): a long file handed out last would leave the other
# worker idle while it runs.
SLOWEST_FILES_FIRST = (
    "test_trainer.py", "test_sharding.py", "test_reliability.py", "test_model.py",
    "test_local_tier.py", "test_preemption.py", "test_evaluate.py", "test_aot.py",
    "test_lm_eval.py", "test_cli.py", "test_pallas_scan.py", "test_splash_attention.py",
    "test_reference.py", "test_sequence_parallel.py", "test_synthetic.py",
    "test_lm_eval_induction.py", "test_launch.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOWEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture(autouse=True)
def _absl_verbosity_restored():
  """A command's main run in process (common/cli.py) sets absl's verbosity to
  WARNING for the whole worker; a later test's INFO lines must not depend on
  which files its worker ran before."""
  import logging
  yield
  # NOTSET, as before any command ran: it follows the root logger (caplog).
  # Not the level at the test's start: a session fixture's command may have
  # pinned it before the first test of the worker.
  logging.getLogger("absl").setLevel(logging.NOTSET)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
  """One GCS emulator for the session, its variables set in this process;
  the same gs:// code path as production, no network. Tests that inject
  faults or stop it must heal and restart it (see `healthy_gcs`)."""
  emulator = GcsEmulator(str(tmp_path_factory.mktemp("gcs"))).start()
  saved = {k: os.environ.get(k) for k in emulator.env}
  os.environ.update(emulator.env)
  try:
    yield emulator
  finally:
    emulator.stop()
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value


@pytest.fixture(scope="session")
def gcs_bucket(gcs_emulator):
  """A fresh bucket on the session's GCS emulator; yields "gs://<bucket>"."""
  return gcs_emulator.make_bucket("test-bucket")


@pytest.fixture
def healthy_gcs(gcs_emulator):
  """The session's emulator, serving and without faults after the test."""
  yield gcs_emulator
  gcs_emulator.fail(None)
  if gcs_emulator.process is None:
    gcs_emulator.start()
