"""The work of `python -m trainer.import_recurrentgemma`."""

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx
from ml_collections import config_dict

from model.convert import config_from_recurrentgemma, load_recurrentgemma_params
from model.griffin import Griffin
from pipeline.tokenizer import check_vocab, load_tokenizer
from trainer import config as config_lib
from trainer.checkpoint import CONFIG, STATE, Checkpointer

TOKENIZER_FILE = "tokenizer.model"


# What a parameter tree does not show; everything else is read from its shapes.
_HIDDEN_HYPERPARAMETERS = ("embeddings_scale_by_sqrt_dim", "attention_window_size",
                           "logits_soft_cap")


def recurrentgemma_config(rg_params, preset_name: str):
  """The GriffinConfig of a recurrentgemma parameter tree: sizes from its
  shapes, the hidden hyperparameters from the named preset."""
  import recurrentgemma.jax as rg  # only this command needs the official package

  presets = [p.name for p in rg.Preset]
  if preset_name not in presets:
    raise ValueError(f"--preset={preset_name!r} is not a recurrentgemma preset; valid: {presets}")
  hidden = {k: rg.Preset[preset_name].config_dict[k] for k in _HIDDEN_HYPERPARAMETERS}
  return rg.GriffinConfig.from_flax_params_or_variables(rg_params, **hidden)


def read_as_numpy(checkpoint: str):
  """The saved tree on the host: the saver's device layout does not matter."""
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(checkpoint)
  tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(checkpoint, args=ocp.args.PyTreeRestore(restore_args=as_numpy))


def import_checkpoint(checkpoint: str, tokenizer_path: str, preset: str, workdir: str,
                      base: config_dict.ConfigDict) -> str:
  """Writes `workdir/checkpoints/0`; returns its path. Checks everything
  (tree, preset, tokenizer vocabulary, an empty workdir) before writing."""
  if not epath.Path(checkpoint).exists():
    raise ValueError(f"--checkpoint={checkpoint} does not exist")
  rg_params = read_as_numpy(checkpoint)
  rg_params = rg_params.get("params", rg_params)  # variables or params, both seen
  model_config = config_from_recurrentgemma(recurrentgemma_config(rg_params, preset))
  tokenizer = load_tokenizer(tokenizer_path)
  check_vocab(tokenizer, model_config.vocab_size)
  checkpointer = Checkpointer(workdir, config_lib.build(base).checkpoint)
  if checkpointer.latest_step() is not None:
    raise ValueError(f"--workdir={workdir} already holds checkpoints "
                     f"{sorted(checkpointer.manager.all_steps())}; import into an empty one")

  model = Griffin(model_config, nnx.Rngs(0))
  load_recurrentgemma_params(model, rg_params)  # names any parameter that does not fit
  copied = str(epath.Path(workdir) / TOKENIZER_FILE)
  epath.Path(copied).write_bytes(tokenizer.model_proto)

  values = config_lib.to_dict(config_lib.build(base))
  values["model"] = config_lib.model_config_dict(model_config).to_dict()
  values["data"]["tokenizer"] = copied
  config_lib.from_dict(values)  # the saved config must load back
  state = {"params": nnx.state(model)}  # as in TrainState.params
  checkpointer.manager.save(0, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(values)}))
  checkpointer.close()
  logging.info("imported %s (%s) into %s", checkpoint, preset, checkpointer.directory / "0")
  return str(checkpointer.directory / "0")

