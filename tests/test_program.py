"""One builder for the program a run executes (trainer/program.py): the
compile-only check for a TPU topology lowers exactly what a run compiles."""

import jax
import pytest

from aot import compile_check
from trainer import config as config_lib
from trainer.program import build_program

# Every option that changes the compiled step is set away from its default.
# scan_impl is fixed: `auto` picks the Pallas kernel for TPU devices only.
OPTIONS = {"model.scan_impl": "linear", "run.on_non_finite": "skip",
           "optimizer.grad_accum_steps": 2, "optimizer.z_loss": 1e-4,
           "mesh.ici_data": 2, "mesh.ici_fsdp": 4, "data.seq_len": 32,
           "data.global_batch_size": 16}


def test_compile_check_lowers_the_program_a_run_compiles():
  config = config_lib.build(config_lib.with_overrides(config_lib.defaults(), OPTIONS))
  checked = compile_check.lower_train_step(config, "v5e-8").lowered
  run = build_program(config, jax.devices()[:8])
  ran = run.train_step.lower(run.abstract_state(), (16, 32))
  assert checked.as_text() == ran.as_text()
  assert "skipped" in checked.out_info[1]  # run.on_non_finite=skip made it in


def test_bad_overrides_are_refused_by_name():
  with pytest.raises(ValueError, match=r"override optimizer.learning_rat=0.1 names no "
                                       r"config field.*section of \['model', 'mesh'"):
    config_lib.with_overrides(config_lib.defaults(), {"optimizer.learning_rat": 0.1})
  with pytest.raises(ValueError, match="override steps=3 names no config field"):
    config_lib.with_overrides({}, {"steps": 3})
