"""`python -m trainer.import_recurrentgemma`: a randomly initialised
recurrentgemma model saved in its own format gives the same logits after
import, through our evaluate path; bad input is named before anything is written."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import recurrentgemma.jax as rg
from flax import nnx

from pipeline.documents import stdlib_files
from pipeline.tokenizer import train_tokenizer
from trainer import config as config_lib
from trainer.import_recurrentgemma_lib import import_checkpoint
from trainer.inference import data_parallel_mesh, open_checkpoint, restore_here
from tests.test_trainer import ROOT

VOCAB = 512
PRESET = "RECURRENT_GEMMA_2B_V1"
B, T = 2, 16


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """(checkpoint dir, tokenizer path, rg params, tokens, rg logits): a tiny
  model with RecurrentGemma-2B's hyperparameters that the tree does not show."""
  root = tmp_path_factory.mktemp("rg")
  preset = rg.Preset.RECURRENT_GEMMA_2B_V1.config_dict
  rg_config = rg.GriffinConfig(
      vocab_size=VOCAB, width=64, mlp_expanded_width=192, num_heads=2, lru_width=64,
      block_types=(rg.TemporalBlockType.RECURRENT, rg.TemporalBlockType.RECURRENT,
                   rg.TemporalBlockType.ATTENTION, rg.TemporalBlockType.RECURRENT),
      embeddings_scale_by_sqrt_dim=preset["embeddings_scale_by_sqrt_dim"],
      attention_window_size=preset["attention_window_size"],
      logits_soft_cap=preset["logits_soft_cap"], scan_type=rg.ScanType.LINEAR_NATIVE)
  rg_model = rg.Griffin(rg_config, gradient_checkpointing=False)
  tokens_BT = jax.random.randint(jax.random.key(1), (B, T), 0, VOCAB)
  segment_pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
  with jax.numpy_rank_promotion("allow"):  # the oracle broadcasts implicitly
    params = jax.jit(rg_model.init)(jax.random.key(0), tokens_BT, segment_pos_BT)["params"]
    # Jitted: the eager oracle takes seconds per call on CPU.
    logits_BTV = jax.jit(lambda p, t, s: rg_model.apply({"params": p}, t, s,
                                                        return_cache=False)[0])(
        params, tokens_BT, segment_pos_BT)
  ocp.PyTreeCheckpointer().save(root / "official", params)  # as its load_parameters reads
  texts = (pathlib.Path(path).read_text() for path in stdlib_files(40)[0])
  tokenizer = train_tokenizer(texts, VOCAB, max_chars=300_000)
  (root / "tokenizer.model").write_bytes(tokenizer.model_proto)
  return str(root / "official"), str(root / "tokenizer.model"), tokens_BT, logits_BTV


def _import(checkpoint, tokenizer, workdir, *extra):
  return subprocess.run(
      [sys.executable, "-m", "trainer.import_recurrentgemma", f"--checkpoint={checkpoint}",
       f"--tokenizer={tokenizer}", f"--workdir={workdir}", *extra],
      cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def imported(official, tmp_path_factory):
  """The workdir the command line import wrote."""
  checkpoint, tokenizer, _, _ = official
  workdir = tmp_path_factory.mktemp("imported")
  done = _import(checkpoint, tokenizer, workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def test_imported_checkpoint_gives_the_official_logits(official, imported):
  _, _, tokens_BT, expected_BTV = official
  checkpointer, step, config, _ = open_checkpoint(str(imported), None, {})
  assert step == 0 and config.data.tokenizer == str(imported / "tokenizer.model")
  plan, params = restore_here(checkpointer, step, config, data_parallel_mesh())
  model = nnx.merge(plan.graphdef, params)
  logits_BTV, _ = jax.jit(lambda t, s: model(t, s))(
      tokens_BT, jnp.broadcast_to(jnp.arange(T), (B, T)))
  assert np.abs(np.asarray(expected_BTV)).max() > 1.0  # not a trivial model
  np.testing.assert_allclose(logits_BTV, expected_BTV, atol=1e-5, rtol=0)


def test_a_tokenizer_of_another_vocabulary_is_refused(official, tmp_path):
  checkpoint, _, _, _ = official
  other = train_tokenizer((pathlib.Path(p).read_text() for p in stdlib_files(40)[0]), 600, max_chars=300_000)
  (tmp_path / "other.model").write_bytes(other.model_proto)
  with pytest.raises(ValueError, match="model.vocab_size=512 does not match the "
                     "tokenizer's vocabulary of 600"):
    import_checkpoint(checkpoint, str(tmp_path / "other.model"), PRESET, str(tmp_path / "out"),
                      config_lib.defaults())
  assert not (tmp_path / "out").exists()  # nothing written


def test_an_unknown_preset_is_named(official, tmp_path):
  checkpoint, tokenizer, _, _ = official
  with pytest.raises(ValueError, match="--preset='GEMMA_3' is not a recurrentgemma preset"):
    import_checkpoint(checkpoint, tokenizer, "GEMMA_3", str(tmp_path), config_lib.defaults())


def test_a_workdir_with_checkpoints_is_refused(official, imported):
  checkpoint, tokenizer, _, _ = official
  with pytest.raises(ValueError, match=r"already holds checkpoints \[0\]"):
    import_checkpoint(checkpoint, tokenizer, PRESET, str(imported), config_lib.defaults())
