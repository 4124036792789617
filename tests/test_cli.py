"""Refused input on the command line, as a new user meets it: the real
commands in a subprocess; each ends with one line `<command>: <what is
wrong>` on stderr, exit status 1, and no traceback (common/cli.py)."""

import os
import subprocess
import sys

import pytest

from tests.cpu_devices import xla_flags
from tests.test_trainer import ROOT

CONFIGS = "'configs/griffin_14b.py', 'configs/griffin_1b.py'"  # the start of the list
CASES = [  # (command, arguments, the last line of stderr after "<command>: ")
    ("trainer.train", ["--workdir=/tmp/unused"],
     f"--config is required: a config file, e.g. --config=configs/smoke.py; the configs: "
     f"[{CONFIGS}"),
    ("trainer.train", ["configs/smoke.py", "--workdir=/tmp/unused"],
     "unexpected argument 'configs/smoke.py': every input is a --flag (a config file is "
     "--config=configs/smoke.py); --helpshort lists the flags"),
    ("trainer.train", ["--config=configs/smoke_test.py", "--workdir=/tmp/unused"],
     f"--config=configs/smoke_test.py: no such config file; the configs: [{CONFIGS}"),
    ("trainer.train", ["--config=configs/smoke.py", "--config.model.widht=3",
                       "--workdir=/tmp/unused"],
     "--config.model.widht=3: the config has no field 'widht'; Did you mean \"width\" "
     "instead of \"widht\"?"),
    ("trainer.train", ["--config=configs/smoke.py", "--config.run.steps=abc",
                       "--workdir=/tmp/unused"],
     "flag --config.run.steps=abc: invalid literal for int() with base 10: 'abc'; "
     "--helpshort lists the flags"),
    ("trainer.train", ["--config=configs/smoke.py", "--config.run.steps=0",
                       "--workdir=/tmp/unused"],
     "run.steps=0 must be a positive integer."),
    ("trainer.sample", ["--prompt=def"],
     "flag --workdir=None: Flag --workdir must have a value other than None.; --helpshort "
     "lists the flags"),
    ("trainer.evaluate", ["--workdir=/tmp/no_such_run"], "--workdir=/tmp/no_such_run does not exist"),
    ("trainer.lm_eval", ["--workdir=/tmp/no_such_run", "--task=piqa"],
     "Unknown command line flag 'task'. Did you mean: tasks ?; --helpshort lists the flags"),
    ("pipeline.prepare_store", ["--store=/tmp/unused"],
     f"--config is required: a config file, e.g. --config=configs/smoke.py; the configs: "
     f"[{CONFIGS}"),
    ("aot.compile_check", ["--config=configs/griffin_tiny.py", "--topology=v5e-8", "x"],
     "unexpected argument 'x': every input is a --flag; --helpshort lists the flags"),
]


def run(command: str, args: list[str], prelude: str = "", **env) -> subprocess.CompletedProcess:
  """`python -m command args`, optionally after `prelude` (Python run first)."""
  code = f"{prelude}import runpy; runpy.run_module({command!r}, run_name='__main__', alter_sys=True)"
  return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu",
                                                         XLA_FLAGS=xla_flags(1), **env))


def assert_refused(done: subprocess.CompletedProcess, command: str, message: str):
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith(f"{command}: {message}"), last


@pytest.mark.parametrize("command,args,message", CASES,
                         ids=[f"{c}:{' '.join(a)}" for c, a, _ in CASES])
def test_bad_input_is_one_line(command, args, message):
  assert_refused(run(command, args), command, message)


def test_a_missing_libtpu_is_named_with_the_extra_that_installs_it():
  done = run("aot.compile_check", ["--config=configs/griffin_tiny.py", "--topology=v5e-8"],
             prelude="import sys; sys.modules['libtpu'] = None; ")
  assert_refused(done, "aot.compile_check", "compiling for v5e-8 needs libtpu, which is not "
                 "installed: pip install -e '.[tpu]' (a TPU VM) or -e '.[test]' (any machine)")


def test_a_refusal_inside_training_is_one_line_and_verbosity_shows_the_traceback():
  args = ["--config=configs/griffin_tiny.py", "--workdir=/tmp/unused_run",
          "--config.data.dataset=stdlib", "--config.data.tokenizer=/nowhere/sp.model"]
  message = "data.tokenizer='/nowhere/sp.model': no such SentencePiece .model file"
  assert_refused(run("trainer.train", args), "trainer.train", message)
  verbose = run("trainer.train", [*args, "--verbosity=1"])
  assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_unreachable_cloud_storage_is_named_in_seconds():
  """Storage that refuses connections (a closed loopback port standing in for
  no network): one line, before any retry."""
  done = run("trainer.train", ["--config=configs/smoke.py", "--workdir=gs://bucket/run"],
             STORAGE_EMULATOR_HOST="http://127.0.0.1:9")
  assert_refused(done, "trainer.train", "--workdir=gs://bucket/run: Cloud Storage "
                 "(127.0.0.1:9) cannot be reached from this machine ([Errno 111] Connection "
                 "refused); check its network, or use a local path")


def test_missing_credentials_are_named_with_how_to_authenticate(monkeypatch, tmp_path):
  from common import storage
  monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no_key.json"))
  monkeypatch.setattr(storage, "_connect", lambda *args: None)  # the endpoint answers
  with pytest.raises(ValueError, match=r"--workdir=gs://b/run: this machine has no Google "
                     r"Cloud credentials; authenticate with `gcloud auth application-default "
                     r"login`, or set GOOGLE_APPLICATION_CREDENTIALS"):
    storage.check_gcs_reachable("gs://b/run", "--workdir")
  storage.check_gcs_reachable("/local/run", "--workdir")  # local paths: nothing to check
