"""Evaluate a checkpoint: validation loss, perplexity and next-token accuracy
(argmax = target, over the targets the data counts), and the loss by
document position at a multiple of the training length (JSON and a plot).

    python -m trainer.evaluate --workdir=DIR_OR_GS_PATH [--step=N] \\
        [--eval_batches=N] [--length_multiple=4] [--config.section.field=v ...]

The run config comes from the checkpoint itself; `--config.*` overrides change
it for this evaluation only (e.g. `--config.data.seq_len=1024`, another
`--config.data.dataset`). Parameters only are read, onto whatever devices this
machine has.
"""

from absl import flags
from ml_collections import config_flags

from common import cli
from trainer import config as config_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_EVAL_BATCHES = flags.DEFINE_integer(
    "eval_batches", 16, "Validation batches to score (of each source: a fixed sample).", lower_bound=1)
_LENGTH_MULTIPLE = flags.DEFINE_integer(
    "length_multiple", 4, "Loss by position at this multiple of the training length; 0 = skip.",
    lower_bound=0)
# Only the fields named on the command line are applied (to the saved config).
config_flags.DEFINE_config_dict("config", config_lib.defaults(), lock_config=True)


def main():
  from trainer.evaluate_lib import evaluate  # after flag parsing: importing JAX is slow
  from trainer.train_lib import make_eval_iterator
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  result = evaluate(_WORKDIR.value, _STEP.value, _EVAL_BATCHES.value, make_eval_iterator,
                    overrides, _LENGTH_MULTIPLE.value)
  stderr = (f" ± {result['loss_stderr']:.4f} (standard error over {result['batches']} "
            "batches)" if "loss_stderr" in result else "")
  print(f"step {result['step']}: validation loss {result['loss']:.4f}{stderr}, "
        f"perplexity {result['perplexity']:.2f}, accuracy {result['accuracy']:.4f} over "
        f"{result['tokens']} tokens (length {result['seq_len']})")
  for name, source in result.get("by_source", {}).items():
    print(f"  source {name}: loss {source['loss']:.4f}, perplexity {source['perplexity']:.2f}, "
          f"accuracy {source['accuracy']:.4f} over {source['tokens']} tokens")
  if "by_position" in result:
    by_position = result["by_position"]
    print(f"at {by_position['seq_len']} tokens ({_LENGTH_MULTIPLE.value}x training): loss "
          f"{by_position['loss']:.4f}, accuracy {by_position['accuracy']:.4f}; by position in "
          f"{_WORKDIR.value}/loss_by_position_{result['step']}.png")


if __name__ == "__main__":
  cli.run(main)
